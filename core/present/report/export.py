"""Chart images (PNG, SVG, PDF) rendered by one warm kaleido/Chromium browser per process, and a report's files."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
import plotly.io as pio

from core.common.cache import atomic_write_bytes, atomic_write_text
from core.common.errors import UserError
from core.present.report.parts import frame_to_csv

if TYPE_CHECKING:
    from core.present.report.model import Report

log = logging.getLogger(__name__)

EXPORT_FORMATS = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
DEFAULT_SIZE = (900, 520)  # layout pixels of an exported chart without its own width/height
PNG_SCALE = 2  # PNGs at twice the layout size: sharp on slides
EXPORT_TIMEOUT_S = 120.0


def chromium_path() -> str | None:
    """The browser kaleido drives: `$BROWSER_PATH`, else a Chromium/Chrome on PATH, else Debian's path."""
    candidates = [os.environ.get("BROWSER_PATH")]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")]
    candidates.append("/usr/bin/chromium")
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def export_available() -> bool:
    return chromium_path() is not None


class _ExportServer:
    """One kaleido browser for the whole process, on its own event-loop thread; started on first use.

    Every render is a coroutine submitted to that loop, so calls from several threads (Streamlit sessions) are
    safe and each has a timeout; a failed render closes the browser so the next call starts a fresh one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kaleido: Any = None

    def _start(self) -> None:
        import kaleido

        browser = chromium_path()
        if browser is None:
            raise UserError("image export needs Chromium: install it (apt-get install chromium) or set BROWSER_PATH")
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="kaleido-export", daemon=True).start()

        async def open_browser() -> Any:
            instance = kaleido.Kaleido(path=browser, mathjax=False, timeout=EXPORT_TIMEOUT_S)
            await instance.__aenter__()
            return instance

        try:
            self._kaleido = asyncio.run_coroutine_threadsafe(open_browser(), loop).result(EXPORT_TIMEOUT_S)
        except Exception as exc:
            loop.call_soon_threadsafe(loop.stop)
            raise UserError(f"could not start Chromium for image export ({browser}): {exc}") from exc
        self._loop = loop
        log.info("export browser started: %s", browser)

    def render(self, spec: dict[str, Any], opts: dict[str, Any]) -> bytes:
        with self._lock:
            if self._loop is None:
                self._start()
            loop, instance = self._loop, self._kaleido
        future = asyncio.run_coroutine_threadsafe(instance.calc_fig(spec, opts=opts), loop)
        try:
            return future.result(EXPORT_TIMEOUT_S + 10)
        except Exception as exc:
            future.cancel()
            self.stop()
            raise UserError(f"image export failed: {type(exc).__name__}: {exc}") from exc

    def stop(self) -> None:
        with self._lock:
            loop, instance, self._loop, self._kaleido = self._loop, self._kaleido, None, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(instance.__aexit__(None, None, None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

    @property
    def running(self) -> bool:
        return self._loop is not None


EXPORT_SERVER = _ExportServer()
atexit.register(EXPORT_SERVER.stop)


def figure_bytes(
    figure: go.Figure, format: str, *, width: int | None = None, height: int | None = None, scale: float | None = None
) -> bytes:
    """The chart as PNG, SVG or PDF bytes (rendered by the warm export browser)."""
    if format not in EXPORT_FORMATS:
        raise UserError(f"unknown image format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    spec = figure.to_plotly_json()
    layout = figure.layout
    opts = {
        "format": format,
        "width": width or layout.width or DEFAULT_SIZE[0],
        "height": height or layout.height or DEFAULT_SIZE[1],
        "scale": scale or (PNG_SCALE if format == "png" else 1),
    }
    return EXPORT_SERVER.render(json.loads(pio.to_json(spec, validate=False)), opts)


def export_figure(figure: go.Figure, path: Path | str, format: str | None = None) -> Path:
    """Write the chart to `path` as PNG / SVG / PDF (the format defaults to the file's suffix)."""
    path = Path(path)
    format = format or path.suffix.lstrip(".").lower()
    atomic_write_bytes(path, figure_bytes(figure, format))
    return path


def export_all(report: Report, folder: Path | str, formats: Sequence[str]) -> Iterator[Path]:
    """Every chart in each format and every table as CSV into `folder`; yields each file written."""
    folder = Path(folder)
    for chart in report.charts():
        for format in formats:
            yield export_figure(chart.figure, folder / f"{chart.name}.{format}", format)
    for table in report.tables():
        path = folder / f"{table.name}.csv"
        atomic_write_text(path, frame_to_csv(table.frame))
        yield path
