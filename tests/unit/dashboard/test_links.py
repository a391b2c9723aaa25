"""What a link can do: it reads only folders inside the data roots by itself (anything else waits for a click), its
values are shown as text (never as markdown), and folder walks and page inputs stay within bounds.

Driven through AppTest like tests/test_dashboard.py (fresh caches and cache home per test); the walk's bounds are
set small with monkeypatch to check that a walk stops and says so.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import core.analyses.item_scores
import core.evaluation.ingest
from core.common.errors import UserError
from core.common.limits import MAX_RELEARN_POINTS, MAX_RELEARN_STEP
from core.evaluation import results
from core.evaluation.results import EXAMPLE_RESULTS
from dashboard.plain import plain, shown
from dashboard.state import keys

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "dashboard" / "app.py"
TIMEOUT = 180
SECRET_METRIC, SECRET_VALUE = "canary_metric_7f3a", 0.8675309  # what the secret folder's results hold
HOSTILE_CHAT = "![x](http://example.invalid/a.png)"


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A folder outside the data roots holding one run's secret_SUMMARY.json."""
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    data = {"forget_Q_A_Prob": 0.25, "model_utility": 0.5, SECRET_METRIC: SECRET_VALUE}
    (run / "secret_SUMMARY.json").write_text(json.dumps(data))
    return run.parent


def page_text(at: AppTest) -> str:
    """Everything the page sends to the browser (every element's message, tables' bytes included), as one text."""
    parts: list[str] = []

    def visit(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            visit(child)

    visit(at._tree)
    return "\n".join(parts)


def shows_secret(at: AppTest) -> bool:
    text = page_text(at)
    return SECRET_METRIC in text or str(SECRET_VALUE) in text


def tradeoffs_link(**params: str | list[str]) -> AppTest:
    """The app opened on Tradeoffs from a link with `params`, as tests/test_dashboard.py does."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.query_params.update(params)
    at.run()
    at.switch_page("views/tradeoffs.py").run()
    assert not at.exception
    return at


def read_button(at: AppTest):
    return next((b for b in at.button if b.label == "Read these folders"), None)


def ingest_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every core.evaluation.ingest.ingest call (the page imports it on every run, so the spy is what it
    calls)."""
    calls: list[list[str]] = []
    real = core.evaluation.ingest.ingest

    def spy(paths, **options):
        calls.append([str(path) for path in paths])
        return real(paths, **options)

    monkeypatch.setattr(core.evaluation.ingest, "ingest", spy)
    return calls


# ---------------------------------------------------------------------------------------------- data roots


def test_a_link_outside_the_roots_is_read_only_after_a_click(secret: Path, monkeypatch) -> None:
    calls = ingest_calls(monkeypatch)
    at = tradeoffs_link(folder=str(secret))
    assert not shows_secret(at) and not calls and not at.get("plotly_chart")
    assert any("outside the data roots" in warning.value for warning in at.warning)
    assert str(secret) in [text.value for text in at.text]  # the path, as plain text
    at.run()  # a rerun keeps asking, still without reading
    assert not shows_secret(at) and read_button(at) is not None
    read_button(at).click().run()
    assert not at.exception and calls == [[str(secret)]]
    assert shows_secret(at) and at.get("plotly_chart")
    assert read_button(at) is None


def test_an_outside_oracle_is_asked_for_too(secret: Path, monkeypatch) -> None:
    calls = ingest_calls(monkeypatch)
    at = tradeoffs_link(folder=str(EXAMPLE_RESULTS), oracle=str(secret))
    assert not calls and not shows_secret(at) and read_button(at) is not None
    assert [text.value for text in at.text] == [str(secret)]  # only what is outside is listed


def test_a_link_to_the_whole_disk_does_not_walk(monkeypatch) -> None:
    scanned: list[Path] = []
    real = results._scan
    monkeypatch.setattr(results, "_scan", lambda root, suffixes: scanned.append(root) or real(root, suffixes))
    at = tradeoffs_link(folder="/")
    assert Path("/") not in scanned and read_button(at) is not None
    assert not at.error


def test_dot_dot_and_symlinks_out_of_a_root_count_as_outside(tmp_path: Path, secret: Path, monkeypatch) -> None:
    root = tmp_path / "roots" / "results"
    root.mkdir(parents=True)
    (root / "link").symlink_to(secret, target_is_directory=True)
    monkeypatch.setenv(results.DATA_ROOTS_ENV, os.pathsep.join(["/no/such/root", str(root)]))
    assert results.inside_roots(root) and results.inside_roots(root / "new")
    assert not results.inside_roots(root / "link")
    assert not results.inside_roots(f"{root}/../../elsewhere")
    assert not results.inside_roots(f"{EXAMPLE_RESULTS}/../../../..")
    assert results.inside_roots(EXAMPLE_RESULTS) and results.inside_roots(tmp_path / "home" / "evals")
    assert not results.inside_roots("/") and not results.inside_roots("bad\0path")


def test_a_link_inside_the_roots_loads_at_once(secret: Path, monkeypatch) -> None:
    at = tradeoffs_link(folder=str(EXAMPLE_RESULTS))
    assert read_button(at) is None and not at.error and "tradeoff_chart" in [c.key for c in at.get("plotly_chart")]
    monkeypatch.setenv(results.DATA_ROOTS_ENV, str(secret))  # the operator lists it: now it is a data root
    at = tradeoffs_link(folder=str(secret))
    assert read_button(at) is None and shows_secret(at)


def test_typed_folders_load_with_one_click(secret: Path) -> None:
    at = tradeoffs_link()
    next(t for t in at.text_area if t.label.startswith("Result folders")).input(str(secret))
    next(b for b in at.button if b.label == "Load results").click().run()
    assert not at.exception and not at.error and shows_secret(at)
    assert at.query_params["folder"] == str(secret)  # the link now names it: reopening it asks first


# ---------------------------------------------------------------------------------------------- the session's own links


def _link_page() -> None:
    """A page with one linked input: what new_params returned this run, then the value written back."""
    import streamlit as st

    from dashboard.links import PageLink

    link = PageLink(("q",), seen_key="test_link")
    st.session_state.setdefault("returned", []).append(link.new_params())
    link.write({"q": st.session_state.get("typed", "first")})


def test_an_older_address_of_the_session_s_own_is_not_a_new_link() -> None:
    """A rerun can carry the browser's address from before the session's last write (the prompt's run wrote its
    link while the answer's rerun was on its way). That address is the session's own: it must not put the earlier
    inputs back. A link the session never saw still is new."""
    at = AppTest.from_function(_link_page, default_timeout=TIMEOUT)
    at.query_params["q"] = "opened"
    at.run()  # a link opened: new, then the page writes its own value ("first")
    at.session_state["typed"] = "typed"
    at.run()  # the page writes "typed"
    assert at.query_params["q"] == "typed"
    for stale in ("first", "opened"):  # both older addresses arrive late
        at.query_params["q"] = stale
        at.run()
    at.query_params["q"] = "pasted"
    at.run()
    assert at.session_state["returned"] == [{"q": "opened"}, None, None, None, {"q": "pasted"}]


# ---------------------------------------------------------------------------------------------- link values as text


def test_a_markdown_value_in_a_link_is_shown_as_typed() -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.query_params.update(chat=HOSTILE_CHAT, topk="9999")
    at.run()
    assert not at.exception
    (warning,) = at.warning
    ignored = f"chat={HOSTILE_CHAT!r} (use 1 or 0); topk='9999' (a whole number from 1 to 20)"
    assert warning.value == f"Ignored from the link: {plain(ignored)}."
    assert not re.search(r"(?<!\\)[!\[\]()]", warning.value.removeprefix("Ignored from the link: "))
    assert "![" not in warning.value and "](" not in warning.value


def test_a_prompt_longer_than_the_bound_is_ignored(monkeypatch) -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.query_params.update(prompt="w" * 20_001, answer="paris")
    at.run()
    assert [w.value for w in at.warning] == [
        f"Ignored from the link: {plain('prompt (20,001 characters, more than the 20,000 allowed)')}."
    ]
    assert at.session_state[keys.PROBE_ANSWER] == "paris" and at.text_area(key=keys.PROBE_PROMPT).value == ""


@pytest.mark.parametrize(
    "text",
    ["![x](http://e.invalid/a.png)", "<img src=x onerror=alert(1)>", "$x$ :red[y] :material/home: **b**", "a\nb"],
)
def test_plain_leaves_no_markdown(text: str) -> None:
    escaped = plain(text)
    assert not re.search(r"(?<!\\)[!\[\]()<>*$:]", escaped) and ":material/" not in escaped
    assert shown(escaped) == text


def test_plain_keeps_streamlit_from_rewriting_text() -> None:
    joiner = "\u2060"
    assert plain("a -> b") == f"a \\-{joiner}\\> b" and plain("x->y") == "x\\-\\>y"
    assert plain(":streamlit:") == f"\\:{joiner}streamlit\\:"


# ---------------------------------------------------------------------------------------------- bounded walks


def many_files(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"r{index}_SUMMARY.json").write_text("{}")
    return folder


def test_a_walk_stops_at_the_entry_bound_and_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(results, "MAX_WALK_ENTRIES", 5)
    folder = many_files(tmp_path / "big", 12)
    walked = results.walk(folder)
    assert walked.stopped == "more than 5" and walked.entries == 6 and len(walked.files) == 5
    with pytest.raises(UserError, match=r"stopped after 6 files and folders \(more than 5\); name a narrower"):
        results.fingerprint([str(folder)])


def test_a_walk_stops_at_the_depth_and_time_bounds(tmp_path: Path, monkeypatch) -> None:
    deep = tmp_path / "deep" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    monkeypatch.setattr(results, "MAX_WALK_DEPTH", 2)
    assert results.walk(tmp_path / "deep").stopped == "folders more than 2 deep"
    assert results.walk(tmp_path / "deep" / "a").stopped is None
    monkeypatch.setattr(results, "MAX_WALK_SECONDS", 0.0)
    assert results.walk(tmp_path / "deep" / "a").stopped == "more than 0 s"


def test_the_page_says_a_walk_stopped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(results, "MAX_WALK_ENTRIES", 5)
    calls = ingest_calls(monkeypatch)
    at = tradeoffs_link()
    next(t for t in at.text_area if t.label.startswith("Result folders")).input(str(many_files(tmp_path / "b", 9)))
    next(b for b in at.button if b.label == "Load results").click().run()
    assert any("stopped after 6 files and folders" in e.value and "narrower folder" in e.value for e in at.error)
    assert not calls  # ingest never walks what the bounded walk refused


def test_a_walk_is_reused_by_reruns(tmp_path: Path, monkeypatch) -> None:
    scanned: list[Path] = []
    real = results._scan
    monkeypatch.setattr(results, "_scan", lambda root, suffixes: scanned.append(root) or real(root, suffixes))
    folder = many_files(tmp_path / "run", 2)
    first = results.fingerprint([str(folder)])
    (folder / "r0_SUMMARY.json").write_text('{"a": 1}')  # an edited file: a new key, from the same walk
    assert results.fingerprint([str(folder)]) != first
    assert scanned == [folder]
    monkeypatch.setattr(results, "WALK_CACHE_SECONDS", 0.0)
    results.fingerprint([str(folder)])
    assert scanned == [folder, folder]


# ---------------------------------------------------------------------------------------------- page bounds


def test_relearning_steps_beyond_the_bound_are_refused() -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.run()
    at.switch_page("views/robustness.py").run()
    at.text_input(key="robustness_steps").set_value("1,1000000000").run()
    assert not at.exception
    (error,) = at.error
    assert "relearning steps" in error.value and f"{MAX_RELEARN_STEP:,}" in error.value
    assert not [b for b in at.button if b.label == "Run attacks"]
    at.text_input(key="robustness_steps").set_value(",".join(map(str, range(1, MAX_RELEARN_POINTS + 2)))).run()
    (error,) = at.error
    assert f"at most {MAX_RELEARN_POINTS} relearning steps" in error.value
    at.text_input(key="robustness_steps").set_value(f"1,{MAX_RELEARN_STEP}").run()
    assert not at.error and [b for b in at.button if b.label == "Run attacks"]
    assert 0 < at.text_input(key="robustness_steps").max_chars < 1_000  # the box itself is bounded too


def test_an_uploaded_set_is_parsed_once(monkeypatch) -> None:
    parsed: list[str] = []
    real = core.analyses.item_scores.load_uploaded_dataset
    monkeypatch.setattr(
        core.analyses.item_scores, "load_uploaded_dataset", lambda name, data: parsed.append(name) or real(name, data)
    )
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.run()
    at.switch_page("views/dataset.py").run()
    at.radio(key="dataset_source").set_value("Upload").run()
    content = b'{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": "a2"}\n'
    at.file_uploader(key="dataset_upload").set_value(("set.jsonl", content, "application/json")).run()
    assert not at.exception and not at.error
    assert any(caption.value.startswith("2 items;") for caption in at.caption)
    at.number_input(key="dataset_limit").set_value(1).run()
    at.run()
    assert parsed == ["set.jsonl"]
