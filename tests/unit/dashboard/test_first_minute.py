"""The first minute through AppTest on tiny models: pages draw while the pair loads in the background (a load held
back by the test), the pair arrives and fills the page, sessions share one load and loads run one at a time, a
failed load falls back to the earlier pair, Probe's first visit scores a forget and a retain example side by side
with a reading equal to the one computed from core's own scores, and Tradeoffs opens on results by itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from apptest_pages import APP, TIMEOUT, button, charts, errors, load_checked_pair, open_page, text_input, wait_loaded
from streamlit.testing.v1 import AppTest

from core.analyses.probe import ProbeRequest, score
from core.common.errors import UserError
from core.data.examples import demo_examples
from core.evaluation.results import EXAMPLE_RESULTS
from core.models.pair import ModelPair
from core.present.figures.probe import comparison_reading
from dashboard import sources
from dashboard.plain import shown
from dashboard.state import keys, loader
from dashboard.state.loader import pair_load

QUESTIONS = {
    "probe": "Which answer tokens did unlearning change",
    "dataset": "How far did each question",
    "tradeoffs": "How much model utility",
    "robustness": "Can a paraphrase, a jailbreak",
}


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


@pytest.fixture
def held_loads(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """ModelPair.load waits for the returned event (the test plays a slow machine); each call is counted and its
    (start, end) recorded on the event."""
    release, real = threading.Event(), ModelPair.load
    release.spans = []  # type: ignore[attr-defined]

    def held(*args, **kwargs):
        start = time.monotonic()
        release.wait(TIMEOUT)
        try:
            return real(*args, **kwargs)
        finally:
            release.spans.append((start, time.monotonic()))  # type: ignore[attr-defined]

    monkeypatch.setattr(loader.ModelPair, "load", held)
    return release


def choose(at: AppTest, base: Path, unlearned: Path) -> AppTest:
    text_input(at, "Base model").input(str(base))
    text_input(at, "Unlearned model").input(str(unlearned))
    return button(at, "Load pair").click().run()


def main_progress(at: AppTest) -> list:
    return [bar for bar in at.main.get("progress")]


@pytest.mark.parametrize("page", ["probe", "dataset", "tradeoffs", "robustness"])
def test_a_page_draws_its_own_content_and_the_progress_while_the_pair_loads(page, tiny_pair_dirs, held_loads) -> None:
    at = open_page(page)
    choose(at, *tiny_pair_dirs)
    assert not at.exception and not errors(at)
    assert at.main.caption[0].value.startswith(f":material/help: {QUESTIONS[page]}")
    assert [title.value for title in at.title] == [page.capitalize()]
    if page != "tradeoffs":  # the pages that need the pair say what is loading and how far it got
        assert main_progress(at), "no progress in the main area"
    assert at.sidebar.get("progress"), "no progress in the sidebar"
    held_loads.set()
    wait_loaded(at)
    assert not at.exception and not errors(at)
    assert not main_progress(at) and not at.sidebar.get("progress")
    assert any("Pair loaded" in caption.value for caption in at.sidebar.caption)


def test_probe_first_visit_scores_a_forget_and_a_retain_example_with_their_reading(tiny_pair_dirs, held_loads):
    at = open_page("probe")
    examples = demo_examples()
    forget = next(e for e in examples if e.split == "forget")
    retain = next(e for e in examples if e.split == "retain")
    assert at.text_area(key=keys.PROBE_PROMPT).value == forget.question  # filled in before any model is there
    assert at.text_input(key=keys.PROBE_ANSWER).value == forget.answer
    assert button(at, "Score").disabled
    choose(at, *tiny_pair_dirs)
    held_loads.set()
    wait_loaded(at)
    assert not at.exception and not errors(at)
    pair = pair_load(*at.session_state[keys.PAIR_KEY], None).result()
    chat = at.toggle(key=keys.PROBE_CHAT).value
    expected = score(pair, [ProbeRequest(forget.question, forget.answer), ProbeRequest(retain.question, retain.answer)],
                     chat=chat, top_k=5)  # fmt: skip
    reading = comparison_reading(*expected, str(tiny_pair_dirs[0]), str(tiny_pair_dirs[1]))
    assert [shown(info.value) for info in at.info] == [reading]
    assert [metric.value for metric in at.metric] == [f"{result.delta:+.3f}" for result in expected]
    views = [h.proto.body for h in at.get("html") if "ulens-tokens" in h.proto.body]
    assert len(views) == 2  # forget and retain side by side
    assert all(view.startswith('<div data-scoring="1">') for view in views)  # both drawn by the session's 1st scoring
    button(at, "Score").click().run()  # the same inputs scored again: same numbers, a new scoring number
    views = [h.proto.body for h in at.get("html") if "ulens-tokens" in h.proto.body]
    assert len(views) == 2 and all(view.startswith('<div data-scoring="2">') for view in views)
    assert [metric.value for metric in at.metric] == [f"{result.delta:+.3f}" for result in expected]
    at.text_area(key=keys.PROBE_PROMPT).input("the capital of france is")
    button(at, "Score").click().run()  # a question of the person's own: the retain example goes
    assert len([h for h in at.get("html") if "ulens-tokens" in h.proto.body]) == 1 and not at.info


def test_sessions_share_one_load_and_loads_run_one_at_a_time(tiny_pair_dirs, held_loads) -> None:
    first, second = open_page("dataset"), open_page("dataset")
    choose(first, *tiny_pair_dirs)
    choose(second, *tiny_pair_dirs)
    key = first.session_state[keys.PAIR_KEY]
    assert second.session_state[keys.PAIR_KEY] == key and pair_load(*key, None) is pair_load(*key, None)
    other = open_page("dataset")
    choose(other, tiny_pair_dirs[1], tiny_pair_dirs[0])  # another pair, asked for while the first loads
    held_loads.set()
    for at in (first, second, other):
        wait_loaded(at)
    assert len(held_loads.spans) == 2  # one load per pair, not one per session
    loads = [pair_load(*at.session_state[keys.PAIR_KEY], None) for at in (first, other)]
    assert all(load.ready for load in loads) and loads[0].pair is not loads[1].pair


def test_loads_hold_one_lock_so_two_pairs_never_load_at_once(tiny_pair_dirs, monkeypatch) -> None:
    inside, overlaps, real = [], [], ModelPair.load

    def recorded(*args, **kwargs):
        inside.append(1)
        overlaps.append(len(inside))
        time.sleep(0.2)
        try:
            return real(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(loader.ModelPair, "load", recorded)
    a, b = open_page("dataset"), open_page("dataset")
    choose(a, *tiny_pair_dirs)
    choose(b, tiny_pair_dirs[1], tiny_pair_dirs[0])
    wait_loaded(a), wait_loaded(b)
    assert overlaps == [1, 1]


def test_a_failed_load_is_a_message_and_the_session_keeps_its_earlier_pair(tiny_pair_dirs, monkeypatch) -> None:
    at = open_page("dataset")
    load_checked_pair(at, *tiny_pair_dirs)
    before = at.session_state[keys.PAIR_KEY]

    def broken(*args, **kwargs):
        raise UserError("the weights are cut short")

    monkeypatch.setattr(loader.ModelPair, "load", broken)
    choose(at, tiny_pair_dirs[1], tiny_pair_dirs[0])
    wait_loaded(at)
    assert any("the weights are cut short" in text for text in errors(at)), errors(at)
    assert at.session_state[keys.PAIR_KEY] == before
    assert any("Pair loaded" in caption.value for caption in at.sidebar.caption)


def test_a_missing_folder_is_refused_at_once(tiny_pair_dirs) -> None:
    at = open_page("dataset")
    choose(at, tiny_pair_dirs[0], "/no/such/model")
    assert any("model path not found: /no/such/model" in text for text in errors(at)), errors(at)
    assert keys.PAIR_KEY not in at.session_state


def test_tradeoffs_opens_on_the_bundled_example_until_the_demo_has_results(monkeypatch) -> None:
    at = open_page("tradeoffs")
    assert charts(at), "no chart without any model"
    notes = [caption.value for caption in at.caption]
    assert any("Showing the bundled example: real open-unlearning outputs" in note for note in notes)
    assert at.session_state["tradeoff_sources"] == ((str(EXAMPLE_RESULTS),), None)

    monkeypatch.setattr(sources, "demo_evaluation", lambda: EXAMPLE_RESULTS)  # results where the demo's would be
    at = open_page("tradeoffs")
    assert any("the demo experiment's own evaluation" in caption.value for caption in at.caption)
    assert charts(at)


def test_demo_evaluation_is_the_newest_complete_folder(monkeypatch, tmp_path) -> None:
    class Experiment:
        root = tmp_path

    monkeypatch.setattr(sources, "DemoExperiment", Experiment)
    assert sources.demo_evaluation() is None
    folders = [tmp_path / "evaluations" / name for name in ("tofu-old", "tofu-new", "tofu-half")]
    for folder in folders:
        folder.mkdir(parents=True)
    for folder in folders[:2]:
        (folder / ".complete.json").write_text("{}")
    import os

    os.utime(folders[0], ns=(1, 1))  # older than the other
    assert sources.demo_evaluation() == folders[1]  # the half-written one never counts


def test_page_icons_are_material_symbols() -> None:
    source = APP.read_text(encoding="utf-8")
    import re

    icons = re.findall(r'":material/([a-z_]+):"', source)
    assert len(icons) >= 8  # the page icon and every page's
    assert not re.search(r"[\U0001F300-\U0001FAFF\u2600-\u27BF]", source)


def test_question_line_is_drawn_above_every_page() -> None:
    for page, question in QUESTIONS.items():
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.session_state[keys.AUTOLOAD] = False
        at.run()
        if page != "probe":
            at.switch_page(f"views/{page}.py").run()
        assert at.main.caption[0].value.startswith(f":material/help: {question}")


def test_dataset_results_are_scrolled_into_view_once_after_compute(tiny_pair_dirs) -> None:
    at = open_page("dataset", tiny_pair_dirs)
    at.number_input(key="dataset_limit").set_value(2)
    button(at, "Compute per-item metrics").click().run()
    assert not at.exception and not errors(at)
    assert "dataset-results" in [header.proto.anchor for header in at.subheader]
    scrolls = [element for element in at.get("iframe") if "dataset-results" in element.proto.srcdoc]
    assert len(scrolls) == 1  # right after the click
    at.run()
    assert not [element for element in at.get("iframe") if "dataset-results" in element.proto.srcdoc]  # only once


def test_probe_tells_the_story_again_for_a_new_pair(tiny_pair_dirs) -> None:
    at = open_page("probe")
    load_checked_pair(at, *tiny_pair_dirs)
    first = [metric.value for metric in at.metric]
    assert len(first) == 2  # the forget and the retain example
    load_checked_pair(at, tiny_pair_dirs[1], tiny_pair_dirs[0])  # the sides swapped: every Δ changes sign
    assert not errors(at)
    again = [metric.value for metric in at.metric]
    # each value is printed to 3 decimals: two roundings of at most 5e-4 each, plus float32 noise far below that
    assert len(again) == 2
    assert all(float(a) == pytest.approx(-float(b), abs=1.5e-3) for a, b in zip(again, first, strict=True))


def test_sidebar_offers_the_prompt_template_on_every_page() -> None:
    from core.scoring.templates import list_templates

    for page in ("probe", "tradeoffs"):
        at = open_page(page)
        box = next(box for box in at.sidebar.selectbox if box.label == "Template")
        assert list(box.options)[1:] == list(list_templates())  # "model default" first, then every shipped one
