"""A report as PDF: its print version (every chart as inline SVG from the export browser, no scripts) printed by the
system Chromium in headless mode, with a page break before each section (the report's print CSS).

Charts stay vectors: an inline SVG is printed as paths and text, so the PDF zooms cleanly and its text (the summary,
the tables, the chart labels) can be searched and copied.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from core.common.cache import atomic_write_bytes
from core.common.errors import UserError
from core.present.report import export
from core.present.report.parts import Chart
from core.present.report.render import render_document

if TYPE_CHECKING:
    from core.present.report.model import Report

PRINT_WIDTH = 760  # CSS pixels of an A4 page's text width at 12 mm margins, so charts print at their own size
PDF_TIMEOUT_S = 120.0
_PRINT_POLICY = (
    "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
    'img-src data:">'
)
_XML_PROLOGUE = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.IGNORECASE)
_UNSAFE = re.compile(r"<script\b.*?</script\s*>|<foreignObject\b.*?</foreignObject\s*>", re.IGNORECASE | re.DOTALL)
_HANDLER = re.compile(r"""\son[a-z]+\s*=\s*("[^"]*"|'[^']*')""", re.IGNORECASE)


def chart_svg(chart: Chart) -> str:
    """The chart as an SVG element for inline use: rendered by the export browser at the print width, without its
    XML prologue, scripts or event handlers (plotly writes none; this keeps it so whatever the labels hold)."""
    layout = chart.figure.layout
    height = layout.height or export.DEFAULT_SIZE[1]
    text = export.figure_bytes(chart.figure, "svg", width=PRINT_WIDTH, height=height).decode("utf-8")
    text = _HANDLER.sub("", _UNSAFE.sub("", _XML_PROLOGUE.sub("", text)))
    if not text.lstrip().startswith("<svg"):
        raise UserError(f"chart {chart.name!r}: the export browser did not return an SVG")
    return text


def print_html(report: Report) -> str:
    """The print version of the report: the same document with charts as inline SVG and no scripts at all (a
    content-security policy forbids any, and any request)."""
    document = render_document(report, svg=chart_svg)
    return document.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + _PRINT_POLICY, 1)


def _chromium_command(browser: str, page: Path, out: Path, profile: Path) -> list[str]:
    command = [
        browser, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
        "--disable-extensions", "--no-pdf-header-footer", f"--user-data-dir={profile}", f"--print-to-pdf={out}",
        page.as_uri(),
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox
    return command


def require_chromium() -> str:
    """The Chromium that prints PDFs (and draws their charts), or a UserError that says how to get one."""
    browser = export.chromium_path()
    if browser is None:
        raise UserError("PDF export needs Chromium: install it (apt-get install chromium) or set BROWSER_PATH")
    return browser


def html_to_pdf(document: str, timeout: float = PDF_TIMEOUT_S) -> bytes:
    """Print an HTML document to PDF bytes with the system Chromium (headless); a clear error without one."""
    browser = require_chromium()
    with tempfile.TemporaryDirectory(prefix="ulens-pdf-") as folder:
        page, out = Path(folder) / "report.html", Path(folder) / "report.pdf"
        page.write_text(document, encoding="utf-8")
        try:
            done = subprocess.run(
                _chromium_command(browser, page, out, Path(folder) / "profile"),
                capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise UserError(f"Chromium did not print the report within {timeout:.0f} s") from None
        except OSError as exc:
            raise UserError(f"could not start Chromium ({browser}): {exc}") from None
        data = out.read_bytes() if out.exists() else b""
        if done.returncode != 0 or not data.startswith(b"%PDF-"):
            tail = (done.stderr or "").strip().splitlines()[-3:]
            raise UserError(f"Chromium could not print the report (exit {done.returncode}): {' | '.join(tail)}")
        return data


def report_pdf(report: Report) -> bytes:
    """The report as PDF bytes: its print version printed by Chromium."""
    require_chromium()  # before the charts are drawn, so the message names the PDF
    return html_to_pdf(print_html(report))


def write_pdf(report: Report, path: Path | str) -> Path:
    """Write the report's PDF atomically."""
    path = Path(path)
    atomic_write_bytes(path, report_pdf(report))
    return path
