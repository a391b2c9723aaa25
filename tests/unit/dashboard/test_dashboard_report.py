"""The Report page through AppTest: the HTML it serves, its chart and table exports, and mistakes as messages.

The report built on the page is compared with core computed directly: ingest for the metric table and axes,
core.analyses.probe.score on the same pair for the probes; the download buttons serve the bytes the page built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_pages import wait_loaded
from report_page import (
    INJECTION,
    build,
    errors,
    open_report,
    record_media,
    served,
    widget,
)

from core.analyses.probe import ProbeRequest, score
from dashboard.state import keys
from dashboard.state import pair as pair_state


@pytest.fixture(autouse=True)
def isolated(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app), and downloads recorded (record_media)."""
    record_media(monkeypatch)


def test_probes_on_a_loaded_pair_equal_core_scores(tiny_pair_dirs: tuple[Path, Path]) -> None:
    base, unlearned = tiny_pair_dirs
    at = open_report()
    widget(at.text_input, "Base model").input(str(base))
    widget(at.text_input, "Unlearned model").input(str(unlearned))
    widget(at.button, "Load pair").click().run()
    assert not at.exception and not errors(at)
    wait_loaded(at)
    widget(at.text_area, "Probes, one per line: prompt|answer").input(f"the capital of {INJECTION}|paris\nfrance is")
    at.toggle(key="report_lens").set_value(True)
    at.toggle(key="report_chat").set_value(False)
    build(at)
    assert not errors(at)
    report = at.session_state[keys.REPORT_BUILT][0]
    pair = pair_state.load_pair(*at.session_state[keys.PAIR_KEY])
    expected = score(pair, [ProbeRequest(f"the capital of {INJECTION}", "paris"), ProbeRequest("france is")])
    assert [[t.delta for t in p.tokens] for p in report.probes] == [[t.delta for t in p.tokens] for p in expected]
    assert [lens.answer for lens in report.lenses] == ["paris"]
    document = served(at, "Download report (HTML)").decode("utf-8")
    assert INJECTION not in document
    for key in ("pair", "probes", "layers"):
        assert f'id="section-{key}"' in document


@pytest.mark.parametrize(
    ("folders", "probes", "message"),
    [
        ("", "", "nothing to report"),
        ("", "Who is Jane?|a writer", "need a model pair"),
        ("", " |only an answer", "no prompt"),
        ("/no/such/folder", "", "no such file or folder"),
    ],
)
def test_bad_inputs_are_messages(folders: str, probes: str, message: str) -> None:
    at = open_report()
    widget(at.text_area, "Result folders, one per line").input(folders)
    widget(at.text_area, "Probes, one per line: prompt|answer").input(probes)
    build(at)
    assert any(message in error for error in errors(at)), errors(at)
    assert keys.REPORT_BUILT not in at.session_state


def test_probes_prefilled_from_the_probe_page() -> None:
    at = open_report(probe_result=(None, {"prompt": "Who wrote\nthe book?", "answer": "Jane"}))
    assert widget(at.text_area, "Probes, one per line: prompt|answer").value == "Who wrote the book?|Jane"
