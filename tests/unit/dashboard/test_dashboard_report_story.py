"""The Report page's stakeholder parts through AppTest: a robustness result (this session's or a file), names typed
as KEY=TEXT, the generated summary on the page and in the HTML it serves, and the PDF button (deferred: printed on
click, which tests/e2e/test_report_e2e.py does with a real Chromium)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from report_inputs import MetricTables, robustness_result
from report_page import GRADDIFF, INJECTION, ORACLE, build, downloads, errors, open_report, record_media, served, widget

from core.present.report import export
from dashboard.state import keys


@pytest.fixture(autouse=True)
def isolated(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    record_media(monkeypatch)


def said(at, text: str) -> bool:
    """Whether an error on the page says `text` (errors are escaped for markdown: backslashes dropped)."""
    return any(text in error.replace("\\", "") for error in errors(at))


def results_only(at) -> None:
    widget(at.text_area, "Result folders, one per line").input(str(GRADDIFF))
    widget(at.text_input, "Oracle folder (optional)").input(str(ORACLE))
    widget(at.text_area, "Probes, one per line: prompt|answer").input("")


def test_session_robustness_labels_summary_and_pdf_button(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "export_available", lambda: True)
    at = open_report(robustness_result=((None, "demo"), robustness_result()))
    results_only(at)
    at.radio(key="report_robustness_source").set_value("This session's (Robustness page)")
    widget(at.text_area, "Names to show, one per line: KEY=TEXT").input(f"{GRADDIFF.name}=GradDiff {INJECTION}")
    build(at)
    assert not errors(at)
    document = served(at, "Download report (HTML)").decode("utf-8")
    report = at.session_state[keys.REPORT_BUILT][0]
    assert report.robustness is not None and 'id="section-robustness"' in document
    assert f"GradDiff {INJECTION}" in MetricTables(document).runs and INJECTION not in document
    first = report.summary().findings[0]
    assert first.startswith(f"GradDiff {INJECTION} is the run closest to the oracle")
    assert f"<li>{html.escape(first)}</li>" in document
    shown = " ".join(block.value for block in at.markdown)
    assert "is the run closest to the oracle" in shown and "<script>" not in shown  # escaped for markdown
    pdf = downloads(at)["Download report (PDF)"]
    assert pdf.deferred_file_id and pdf.url == ""  # printed only when clicked


def test_robustness_from_a_file_and_bad_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "export_available", lambda: False)
    folder = tmp_path / "attacks"
    folder.mkdir()
    (folder / "robustness.json").write_text(json.dumps(robustness_result().to_dict()), encoding="utf-8")
    at = open_report()
    results_only(at)
    at.radio(key="report_robustness_source").set_value("A file or folder").run()
    widget(at.text_input, "robustness.json or its folder").input(str(tmp_path / "missing")).run()
    assert said(at, "no robustness.json there"), errors(at)
    build(at)
    assert said(at, "robustness result above could not be read"), errors(at)
    widget(at.text_input, "robustness.json or its folder").input(str(folder))
    widget(at.text_area, "Names to show, one per line: KEY=TEXT").input("no equals sign")
    build(at)
    assert said(at, "KEY=TEXT") and keys.REPORT_BUILT not in at.session_state, errors(at)
    widget(at.text_area, "Names to show, one per line: KEY=TEXT").input("")
    build(at)
    assert not errors(at)
    assert at.session_state[keys.REPORT_BUILT][0].robustness.n_items == robustness_result().n_items
    assert "Download report (PDF)" not in downloads(at)
    assert any("The PDF needs Chromium" in caption.value for caption in at.caption)
