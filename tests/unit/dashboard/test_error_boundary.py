"""The error boundaries (dashboard/boundary.py, around each page and each fragment): an unexpected exception is a
short message with an id (its traceback in the server log under the same id), a UserError its plain message, an
allocation failure the out-of-memory hint; st.stop / st.rerun pass through; the sidebar and other pages keep working.

A page's failure is provoked by patching `core.evaluation.results.our_result_folders`, which only the Tradeoffs page
calls
(pages import it from core.evaluation.results every run, so the patch is what they get).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.common.errors import UserError
from core.evaluation import results
from dashboard import sources
from dashboard.state import keys

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "dashboard" / "app.py"
TIMEOUT = 120
SECRET = "s3cret-detail-from-the-exception"
GENERIC = re.compile(r"^Something went wrong \(error ([0-9a-f]{6})\); the details are in the server log\.$")
OUT_OF_MEMORY = "Out of memory. Try a shorter input, a smaller batch, bfloat16, or a smaller model."


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


def open_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.run()
    assert not at.exception
    return at


def tradeoffs(at: AppTest) -> AppTest:
    return at.switch_page("views/tradeoffs.py").run()


def errors(at: AppTest) -> list[str]:
    return [error.value for error in at.error]


def raising(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def sidebar_labels(at: AppTest) -> set[str]:
    return {widget.label for widget in at.sidebar.text_input}


def test_an_unexpected_exception_is_a_message_with_an_id_and_its_traceback_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    at = open_app()
    monkeypatch.setattr(results, "our_result_folders", raising(KeyError(SECRET)))
    with caplog.at_level(logging.ERROR, logger="dashboard.boundary"):
        tradeoffs(at)
    assert not at.exception  # Streamlit's own exception element (with its traceback) is not shown
    [message] = errors(at)
    match = GENERIC.match(message)
    assert match, message
    shown = " ".join(element.value for element in at.main if isinstance(getattr(element, "value", None), str))
    assert SECRET not in shown and "Traceback" not in shown
    [record] = [r for r in caplog.records if r.name == "dashboard.boundary"]
    assert match.group(1) in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError  # the traceback goes to the log
    assert {"Base model", "Unlearned model"} <= sidebar_labels(at)  # the sidebar was drawn before the failure


def test_each_failure_gets_its_own_id() -> None:
    at = open_app()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(results, "our_result_folders", raising(RuntimeError("boom")))
        first = GENERIC.match(errors(tradeoffs(at))[0]).group(1)
        second = GENERIC.match(errors(at.run())[0]).group(1)
    assert first != second


def test_the_session_goes_on_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app()
    monkeypatch.setattr(results, "our_result_folders", raising(ZeroDivisionError("x")))
    tradeoffs(at)
    assert GENERIC.match(errors(at)[0])
    at.switch_page("views/dataset.py").run()  # another page of the same session
    assert not at.exception and not errors(at)
    assert [title.value for title in at.title] == ["Dataset"]
    monkeypatch.undo()
    tradeoffs(at)  # and the failed page itself, once its cause is gone
    assert not at.exception and not errors(at)
    assert [title.value for title in at.title] == ["Tradeoffs"]


def test_a_user_error_is_its_plain_message(monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app()
    monkeypatch.setattr(results, "our_result_folders", raising(UserError("bad *folder* [x](http://e.com)")))
    tradeoffs(at)
    assert not at.exception
    # markdown characters escaped (dashboard/plain.py), so the text shows as typed and no link is made
    assert errors(at) == [r"bad \*folder\* \[x\]\(http\://e\.com\)"]


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to "),
    ],
    ids=["MemoryError", "cpu-allocator"],
)
def test_an_allocation_failure_is_the_out_of_memory_hint(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    at = open_app()
    monkeypatch.setattr(results, "our_result_folders", raising(exc))
    tradeoffs(at)
    assert not at.exception
    [message] = errors(at)
    assert re.fullmatch(re.escape(OUT_OF_MEMORY) + r" \(error [0-9a-f]{6}\)", message), message


def test_st_stop_in_a_page_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "default_results", lambda: None)  # nothing to open by itself
    at = tradeoffs(open_app())  # with no result folders chosen, the page says so and calls st.stop()
    assert not at.exception and not errors(at)
    assert any("Choose result folders" in info.value for info in at.info)


def test_st_rerun_in_a_page_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_app()
    calls = []

    def rerun_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            st.rerun()
        return []

    monkeypatch.setattr(results, "our_result_folders", rerun_once)
    tradeoffs(at)
    assert len(calls) >= 2  # the rerun happened: the page ran again
    assert not at.exception and not errors(at)
    assert [title.value for title in at.title] == ["Tradeoffs"]


def test_results_with_one_metric_are_a_message_on_the_tradeoffs_page() -> None:
    at = tradeoffs(open_app())
    at.file_uploader[0].set_value(("TOFU_SUMMARY.json", b'{"forget_Q_A_Prob": 0.3}', "application/json"))
    next(b for b in at.button if b.label == "Load results").click().run()
    assert not at.exception
    assert any("a tradeoff needs two different metrics" in text for text in errors(at)), errors(at)


def fragment_app() -> None:
    """A page with a fragment that fails on its first line (AppTest runs this function as a script)."""
    import streamlit as st

    from dashboard.boundary import fragment

    @fragment
    def panel() -> None:
        st.write("before")
        raise ValueError("s3cret-detail-from-the-exception")

    panel()
    st.write("after the fragment")


def test_a_fragment_has_its_own_boundary(caplog: pytest.LogCaptureFixture) -> None:
    """A fragment's own rerun does not pass through the page's boundary, so the fragment carries one: its failure
    is the message with an id, and the page around it goes on."""
    at = AppTest.from_function(fragment_app, default_timeout=TIMEOUT)
    with caplog.at_level(logging.ERROR, logger="dashboard.boundary"):
        at.run()
    assert not at.exception
    [message] = errors(at)
    error_id = GENERIC.match(message).group(1)
    assert [m.value for m in at.markdown] == ["before", "after the fragment"]
    [record] = [r for r in caplog.records if r.name == "dashboard.boundary"]
    assert error_id in record.getMessage() and "fragment" in record.getMessage()
    assert SECRET in record.exc_text and SECRET not in message
