"""Chart and table exports rendered by Debian's Chromium (no app server): the report's figures as PNG, SVG and PDF
through core.present.report.export, and the dashboard Report page's image downloads through AppTest."""

from __future__ import annotations

import html
import io
from pathlib import Path

import pandas as pd
import pytest
from report_inputs import build_full_report, ingested_results, png_size, tiny_pair
from report_page import (
    GRADDIFF,
    INJECTION,
    ORACLE,
    RecordingManager,
    RecordingStorage,
    build,
    downloads,
    errors,
    open_report,
    record_media,
    served,
    widget,
)

from core.common.errors import UserError
from core.evaluation.ingest import ingest
from core.evaluation.results import default_axes, metric_options
from core.present.report import export as report_module
from core.present.report.export import DEFAULT_SIZE, PNG_SCALE, export_all, export_figure, figure_bytes
from core.present.report.model import Report
from core.present.report.parts import frame_to_csv, metric_table, table_metrics
from dashboard.state import keys


@pytest.fixture(scope="module")
def full_report() -> Report:
    """The full report of tests/unit/present/test_report.py (report_inputs: a tiny pair and the ingest fixtures)."""
    return build_full_report(tiny_pair(), ingested_results())


@pytest.fixture
def isolated(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """For the Report page: fresh caches, walks, cache home and uploads (conftest.fresh_app), downloads recorded."""
    record_media(monkeypatch)


# ---------------------------------------------------------------------------------------------- core exports


def test_exports_png_svg_pdf(full_report: Report, tmp_path: Path) -> None:
    figure = full_report.charts()[0].figure
    written = {fmt: export_figure(figure, tmp_path / f"chart.{fmt}") for fmt in ("png", "svg", "pdf")}
    png, svg, pdf = (written[fmt].read_bytes() for fmt in ("png", "svg", "pdf"))
    assert png_size(png) == (DEFAULT_SIZE[0] * PNG_SCALE, DEFAULT_SIZE[1] * PNG_SCALE)
    assert b"<svg" in svg[:500] and svg.rstrip().endswith(b"</svg>")
    assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-1024:]
    assert all(len(data) > 1024 for data in (png, svg, pdf))
    # one warm browser serves every export of the process
    server_loop = report_module.EXPORT_SERVER._loop
    assert png_size(figure_bytes(figure, "png", width=400, height=300, scale=1)) == (400, 300)
    assert report_module.EXPORT_SERVER._loop is server_loop
    with pytest.raises(UserError, match="unknown image format"):
        figure_bytes(figure, "gif")


def test_export_all_writes_every_chart_and_table(full_report: Report, tmp_path: Path) -> None:
    written = sorted(path.name for path in export_all(full_report, tmp_path, ["svg"]))
    expected = sorted([f"{c.name}.svg" for c in full_report.charts()] + [f"{t.name}.csv" for t in full_report.tables()])
    assert written == expected == sorted(path.name for path in tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- Report page


@pytest.mark.usefixtures("isolated")
def test_results_report_serves_its_html_and_exports(tmp_path: Path) -> None:
    at = open_report()
    assert [title.value for title in at.title] == ["Report"]
    widget(at.text_area, "Result folders, one per line").input(str(GRADDIFF))
    widget(at.text_input, "Oracle folder (optional)").input(str(ORACLE)).run()
    summary = ingest([GRADDIFF], oracle=ORACLE).summary
    axes = default_axes(metric_options(summary), summary)
    assert (at.selectbox(key="report_x").value, at.selectbox(key="report_y").value) == axes
    widget(at.text_area, "Notes").input(f"Read this {INJECTION}")
    build(at)
    assert not errors(at)
    document = served(at, "Download report (HTML)").decode("utf-8")
    _, built, name = at.session_state[keys.REPORT_BUILT]
    assert document == built.decode("utf-8") and name == "unlearning-report.html"
    assert INJECTION not in document and html.escape(INJECTION) in document
    for key in ("notes", "tradeoffs", "metrics", "appendix"):
        assert f'id="section-{key}"' in document
    assert 'id="section-probes"' not in document
    # the table export serves the metric table computed from the same folders
    expected = metric_table(summary, table_metrics(summary, axes))
    assert served(at, "CSV").decode("utf-8") == frame_to_csv(expected)
    shown = pd.read_csv(io.BytesIO(served(at, "CSV")))
    assert shown["model"].tolist() == expected["model"].tolist()
    # the chart's image buttons render on click (deferred): run the PNG one as a click does
    images = {label: proto for label, proto in downloads(at).items() if label in ("PNG", "SVG", "PDF")}
    assert sorted(images) == ["PDF", "PNG", "SVG"] and all(proto.deferred_file_id for proto in images.values())
    url = RecordingManager.latest.execute_deferred(images["PNG"].deferred_file_id)
    png = RecordingStorage.files[Path(url).stem]
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024
