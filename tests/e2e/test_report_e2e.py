"""The HTML report opened from disk in the real Chromium with every non-file request blocked: it draws every chart,
asks the network for nothing, injected markup in prompts, labels and notes stays text, and its tables fit the page.
The PDF printed by the same Chromium: a valid PDF whose text holds the summary and the notes as text, whose charts
are vectors (no raster image but heatmap cells), with each section from the model pair on starting a page; and the
Report page's PDF download.

(Plotly draws a heatmap's cells as an image of one pixel per cell, so those are the PDF's only rasters.)"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pypdf
import pytest
from playwright.sync_api import Page, Route, expect
from report_inputs import robustness_result
from report_page import (
    GRADDIFF,
    ORACLE,
    RecordingManager,
    RecordingStorage,
    build,
    downloads,
    open_report,
    record_media,
)
from report_page import widget as page_widget
from tiny_models import TinyTokenizer, make_tiny_llama

from core.analyses.probe import ProbeRequest
from core.evaluation.ingest import ingest
from core.models.pair import ModelPair
from core.present.report.model import Report, build_report
from core.present.report.pdf import print_html
from core.present.report.render import SECTIONS
from dashboard.state import keys

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
SCRIPT = "<script>window.__pwned = 1</script>"
IMAGE = '<img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def report() -> Report:
    pair = ModelPair.from_models(make_tiny_llama(seed=0), make_tiny_llama(seed=1), TinyTokenizer())
    results = ingest(
        [FIXTURES / "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"],
        oracle=FIXTURES / "tofu_Llama-3.2-1B-Instruct_retain90",
    )
    probes = [ProbeRequest(f"Who wrote {SCRIPT}?", "Jane Doe"), ProbeRequest(f"{IMAGE} The sky is", None)]
    return build_report(
        pair, results=results, probes=probes, with_attribution=True, with_lens=True, notes=f"Notes {SCRIPT}\n{IMAGE}",
        robustness=robustness_result(), labels={"base": f"demo:target {IMAGE}", "unlearned": "demo:npo@12"},
    )  # fmt: skip


def squeeze(text: str) -> str:
    """Text without any whitespace: PDF text extraction breaks lines where the page wrapped them."""
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def pdf_pages(report: Report) -> list[str]:
    data = report.render_pdf()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]
    reader = pypdf.PdfReader(io.BytesIO(data))
    # charts are vectors; the only rasters are plotly's heatmap cells, one pixel per cell (exact at any zoom)
    cells = {(len(z[0]), len(z)) for chart in report.charts() for trace in chart.figure.data
             if trace.type == "heatmap" for z in [trace.z]}  # fmt: skip
    assert cells and {image.image.size for page in reader.pages for image in page.images} <= cells
    return [page.extract_text() for page in reader.pages]


def test_report_renders_every_chart_offline_and_keeps_injections_as_text(
    page: Page, report: Report, tmp_path: Path, shot_dir: Path
) -> None:
    path = report.write(tmp_path / "report.html")
    requested, blocked, page_errors = [], [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    def only_files(route: Route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_files)
    page.goto(path.as_uri())
    charts = page.locator("div.chart")
    expect(charts).to_have_count(len(report.charts()))
    page.wait_for_function(
        "() => [...document.querySelectorAll('div.chart')].every(div => div.querySelector('svg.main-svg'))"
    )
    drawn = page.evaluate("() => [...document.querySelectorAll('div.chart')].map(div => div.data.length)")
    assert drawn == [len(chart.figure.data) for chart in report.charts()]
    assert blocked == [] and [url for url in requested if not url.startswith("file:")] == []
    assert requested == [path.as_uri()]  # the file itself and nothing else (not even the injected <img src=x>)
    assert page_errors == []
    assert page.evaluate("typeof window.__pwned") == "undefined"
    expect(page.locator("#section-notes")).to_contain_text(SCRIPT)
    expect(page.locator("#section-notes")).to_contain_text(IMAGE)
    expect(page.locator("#probe-1 .qa")).to_contain_text(SCRIPT)
    assert page.locator("#section-notes img, #section-probes img").count() == 0
    page.screenshot(path=str(shot_dir / "report.png"), full_page=True)


WIDTHS = "() => [...document.querySelectorAll('.table-wrap')].map(d => [d.scrollWidth, d.clientWidth])"


def test_report_tables_fit_the_page(page: Page, report: Report, tmp_path: Path) -> None:
    """At the browser's 1280-px width, and in the print version at an A4 page's text width (186 mm = 703 CSS px),
    no table is wider than the page (nothing to scroll sideways, nothing cut off on paper)."""
    page.goto(report.write(tmp_path / "report.html").as_uri())
    widths = page.evaluate(WIDTHS)
    assert widths and all(scroll <= client for scroll, client in widths), widths
    expect(page.locator("#section-pair")).to_contain_text(f"demo:target {IMAGE}")
    assert page.locator("#section-pair img").count() == 0
    printed = tmp_path / "print.html"
    printed.write_text(print_html(report), encoding="utf-8")
    page.set_viewport_size({"width": 703, "height": 1000})
    page.emulate_media(media="print")
    page.goto(printed.as_uri())
    widths = page.evaluate(WIDTHS)
    assert widths and all(scroll <= client for scroll, client in widths), widths


def test_pdf_holds_the_summary_as_text(pdf_pages: list[str], report: Report) -> None:
    text = squeeze(" ".join(pdf_pages))
    summary = report.summary()
    assert summary.findings and summary.caveats
    for line in [*summary.findings, *summary.caveats]:
        assert squeeze(line) in text, line
    assert squeeze(f"Notes {SCRIPT}") in text and squeeze(IMAGE) in text  # markup printed as text


def test_pdf_starts_each_section_on_a_page(pdf_pages: list[str], report: Report) -> None:
    """Summary and notes share the first page; every later section opens a page (the print CSS's page breaks)."""
    firsts = [squeeze(page)[:200] for page in pdf_pages]
    assert firsts[0].startswith(squeeze(report.title)) and squeeze("Summary") in firsts[0]
    for key in ("pair", "tradeoffs", "metrics", "robustness", "probes", "attribution", "layers", "appendix"):
        assert any(first.startswith(squeeze(SECTIONS[key])) for first in firsts), key


def test_report_page_serves_the_pdf(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Report page's PDF button prints the report it built when clicked (a deferred download)."""
    record_media(monkeypatch)
    at = open_report()
    page_widget(at.text_area, "Result folders, one per line").input(str(GRADDIFF))
    page_widget(at.text_input, "Oracle folder (optional)").input(str(ORACLE)).run()
    page_widget(at.text_area, "Probes, one per line: prompt|answer").input("")  # results only: no pair needed
    build(at)
    button = downloads(at)["Download report (PDF)"]
    assert button.deferred_file_id
    data = RecordingStorage.files[Path(RecordingManager.latest.execute_deferred(button.deferred_file_id)).stem]
    assert data.startswith(b"%PDF-")
    text = squeeze(" ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages))
    report = at.session_state[keys.REPORT_BUILT][0]
    assert squeeze(report.summary().findings[0]) in text
