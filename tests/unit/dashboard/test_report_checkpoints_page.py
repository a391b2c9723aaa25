"""The Report page offers the Checkpoints page's view of this session (AppTest on tiny models): the report it builds
holds that view, with the numbers core.analyses.multi computes on the same models, and the run's HTML-like method
name stays text in the HTML it serves."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from apptest_pages import button, errors
from report_page import build, open_report, record_media, served, widget

from core.analyses.multi import lens_across, probe_many
from core.analyses.probe import ProbeRequest
from dashboard.state import keys
from tests.unit.dashboard.test_checkpoints_page import ANSWER, HOSTILE, PROMPT, expected_set, open_checkpoints
from tests.unit.dashboard.test_checkpoints_page import folders as folders


@pytest.fixture(autouse=True)
def isolated(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app), and downloads recorded (record_media)."""
    record_media(monkeypatch)


def test_the_report_holds_the_checkpoints_view_of_the_session(folders: dict[str, Path]) -> None:
    empty = open_report()
    assert not [t for t in empty.toggle if t.key == "report_checkpoints"]  # nothing probed yet: nothing offered
    at = open_checkpoints(folders)
    button(at, "Probe every model").click().run()
    button(at, "Run the logit lens across checkpoints").click().run()
    assert not at.exception and not errors(at), errors(at)
    at.switch_page("views/report.py").run()
    assert at.toggle(key="report_checkpoints").value  # offered, and on
    build(at)
    assert not errors(at), errors(at)
    report = at.session_state[keys.REPORT_BUILT][0]
    (view,) = report.checkpoints
    models = expected_set(folders)
    want = probe_many(models, ProbeRequest(PROMPT, ANSWER))
    want_lens = lens_across(models, PROMPT, ANSWER, chat=False)
    assert view.probe.answer_logprobs() == pytest.approx(want.answer_logprobs(), abs=1e-4)
    assert [view.runs, view.steps] == [[None, None, HOSTILE, HOSTILE, HOSTILE], [None, None, 1, 2, 3]]
    assert view.lens is not None  # the same lens arithmetic on the same models: the same mean ranks
    assert [r for row in view.lens.rank for r in row] == pytest.approx([r for row in want_lens.rank for r in row])
    assert view.probe.models[:2] == ["a", "b"]  # the typed folders, cut to their names
    document = served(at, "Download report (HTML)").decode("utf-8")
    assert 'id="section-checkpoints"' in document and "<b>npo</b>" not in document
    assert html.escape(f"{HOSTILE}@3") in document
    at.toggle(key="report_checkpoints").set_value(False)
    widget(at.text_area, "Probes, one per line: prompt|answer").input(f"{PROMPT}|{ANSWER}")
    build(at)
    assert not errors(at), errors(at)
    assert not at.session_state[keys.REPORT_BUILT][0].checkpoints
