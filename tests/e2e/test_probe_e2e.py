"""The Probe page in a real Chromium: score demo forget prompts, compare what is drawn with core.analyses.probe
computed in
the test process, injected HTML stays text, and four sessions scoring at once each get their own solo result."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from playwright.sync_api import Browser, Page, expect
from streamlit_ui import (
    ANSWER_DELTA,
    PLOT,
    SCORED,
    choose,
    click_score,
    fill_probe,
    is_on,
    load_pair,
    metric_number,
    open_examples,
    open_with_default_pair,
    page_shot,
    rendered_tokens,
    rgb,
    wait_idle,
    wait_scored,
)

from core.analyses.probe import ProbeRequest, ProbeResult, score
from core.data.examples import demo_examples

INJECTION = "<img src=x onerror=\"document.title='pwned'\"> What is the capital of France?"
ANSWER_INJECTION = "<b>Paris</b><script>document.title='pwned'</script>"
TOP_K = 5  # the Probe page's default
TOLERANCE = 1e-3  # the page shows Δ with 3 decimals and data-delta with 6


def solo(pair, prompt: str, answer: str, chat: bool, top_k: int = TOP_K) -> ProbeResult:
    return score(pair, [ProbeRequest(prompt, answer)], chat=chat, top_k=top_k)[0]


def assert_matches(page: Page, expected: ProbeResult) -> None:
    """The drawn tokens (text, position, Δ) and the answer Δ metric equal the result computed here."""
    drawn = rendered_tokens(page)
    assert [t["text"] for t in drawn] == [t.token for t in expected.tokens]
    assert [t["position"] for t in drawn] == [t.position for t in expected.tokens]
    assert [t["delta"] for t in drawn] == pytest.approx([t.delta for t in expected.tokens], abs=TOLERANCE)
    assert metric_number(page, ANSWER_DELTA) == pytest.approx(expected.delta, abs=TOLERANCE)


def test_probe_same_model_and_html_injection(page: Page, app_url: str, embedded_model_dir, shot_dir):
    load_pair(page, app_url, str(embedded_model_dir), str(embedded_model_dir))
    fill_probe(page, INJECTION, ANSWER_INJECTION)
    wait_scored(page, contains="Paris", after=click_score(page))  # not the first visit's example, drawn already
    drawn = rendered_tokens(page)
    assert drawn and all(t["delta"] == 0.0 for t in drawn)  # the same model on both sides shifts nothing
    assert "".join(t["text"] for t in drawn) == ANSWER_INJECTION  # the answer's markup shows as its characters
    expect(page.locator(".ulens-context").first).to_contain_text("<img src=x onerror=")
    assert page.locator(".ulens-tokens img, .ulens-tokens b, .ulens-tokens script").count() == 0
    assert page.title() != "pwned"
    page_shot(page, shot_dir / "probe-injection.png")


def test_forget_prompt_loses_probability_on_the_demo_pair_and_its_link_reproduces_it(
    page: Page, browser: Browser, demo_app_url: str, quick_demo, demo_pair, shot_dir
):
    item = quick_demo.data.forget.items[0]
    open_with_default_pair(page, demo_app_url)
    choose(page, "Example from the demo forget / retain sets", f"forget · {item.question}")
    expect(page.get_by_role("textbox", name="Prompt")).to_have_value(item.question)
    expect(page.get_by_role("textbox", name="Reference answer (optional)")).to_have_value(item.answer)
    chat = is_on(page, "Chat template")
    assert chat == quick_demo.recipe.chat  # on a demo pair the toggle starts in the demo's own format
    wait_scored(page, after=click_score(page))  # the first visit scored this example already: wait for this scoring
    expected = solo(demo_pair, item.question, item.answer, chat)
    assert_matches(page, expected)
    assert expected.delta < 0 and metric_number(page, ANSWER_DELTA) < 0  # unlearning took the answer's probability
    for token in rendered_tokens(page):  # red where the unlearned model lost probability, blue where it gained
        r, _, b = rgb(token["background"])
        if token["delta"] < -0.05:
            assert r > b, token
        elif token["delta"] > 0.05:
            assert b > r, token
    expect(page.locator(PLOT).first).to_be_visible()  # the per-token Δ chart
    page_shot(page, shot_dir / "pages" / "probe.png")

    # the session wrote its inputs into the URL; that link, opened in another browser session, shows the same view
    written = parse_qs(urlparse(page.url).query)
    assert written["prompt"] == [item.question] and written["answer"] == [item.answer]
    assert written["score"] == ["1"] and written["chat"] == ["1" if chat else "0"]
    other = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        reopened = other.new_page()
        reopened.set_default_timeout(120_000)
        reopened.goto(page.url)
        wait_scored(reopened)
        assert rendered_tokens(reopened) == rendered_tokens(page)
        assert metric_number(reopened, ANSWER_DELTA) == metric_number(page, ANSWER_DELTA)
    finally:
        other.close()


def test_four_sessions_scoring_at_once_get_their_solo_results(
    browser: Browser, demo_app_url: str, quick_demo, demo_pair
):
    data = quick_demo.data
    items = [data.forget.items[1], data.forget.items[2], data.retain.items[0], data.retain.items[1]]
    contexts = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in items]
    try:
        pages = []
        for context, item in zip(contexts, items, strict=True):
            context.set_default_timeout(120_000)
            page = context.new_page()
            open_with_default_pair(page, demo_app_url)
            fill_probe(page, item.question, item.answer)
            pages.append(page)
        chats = [is_on(page, "Chat template") for page in pages]
        befores = [click_score(page) for page in pages]  # all four runs start before any is waited for
        for page, item, before in zip(pages, items, befores, strict=True):
            wait_scored(page, contains=item.answer, after=before)  # its own answer, not the first visit's example
        for page, item, chat in zip(pages, items, chats, strict=True):
            assert_matches(page, solo(demo_pair, item.question, item.answer, chat))
    finally:
        for context in contexts:
            context.close()


def test_a_probe_link_restores_its_inputs_and_scores_them(page: Page, demo_app_url: str, quick_demo, demo_pair):
    """A link with every input (chat on, unlike the demo default; top-k 3; the base view; score=1) is restored and
    scored on open."""
    item = quick_demo.data.forget.items[3]
    params = {"prompt": item.question, "answer": item.answer, "chat": "1", "topk": "3", "view": "base", "score": "1"}
    page.goto(f"{demo_app_url}/?{urlencode(params)}")
    wait_scored(page)
    expect(page.get_by_role("textbox", name="Prompt")).to_have_value(item.question)
    expect(page.get_by_role("textbox", name="Reference answer (optional)")).to_have_value(item.answer)
    expect(page.get_by_role("spinbutton", name="top-k")).to_have_value("3")
    assert is_on(page, "Chat template")
    expect(page.locator(".ulens-legend")).to_contain_text("log-prob under the base model")
    assert_matches(page, solo(demo_pair, item.question, item.answer, chat=True, top_k=3))


def test_score_clicked_right_after_an_example_pill_loses_nothing(page: Page, demo_app_url: str, quick_demo, demo_pair):
    """One click on a forget-set pill, the next on Score with no wait between them. If Score's run still gets the
    inputs the browser held before the pill's run came back (the first visit's example, or an empty prompt), the page
    says so (scores for earlier inputs, or an empty prompt) or shows those inputs' scores (the race docs/ARCHITECTURE.md
    records as known); either way the app stays up, the box holds the example, and Score then gives the example's
    scores."""
    item = quick_demo.data.forget.items[1]
    example = next(e for e in demo_examples() if e.question == item.question)
    open_with_default_pair(page, demo_app_url)
    chat = is_on(page, "Chat template")
    assert open_examples(page)
    page.get_by_role("radiogroup", name="Forget-set examples").get_by_role("radio", name=example.pill).click()
    page.keyboard.press("Escape")  # the popover closes (a keystroke, no wait for the pill's run)
    click_score(page)
    empty = page.get_by_text("the prompt is empty")
    expect(page.locator(SCORED).first.or_(empty)).to_be_visible()
    wait_idle(page)
    expect(page.get_by_role("textbox", name="Prompt")).to_have_value(item.question)
    expect(page.get_by_role("textbox", name="Reference answer (optional)")).to_have_value(item.answer)
    stale = page.get_by_text("The scores below are for earlier inputs")
    if empty.count() or stale.count() or item.answer not in "".join(str(t["text"]) for t in rendered_tokens(page)):
        click_score(page)
    wait_scored(page, contains=item.answer)  # this example's answer drawn (not only the first visit's)
    assert_matches(page, solo(demo_pair, item.question, item.answer, chat))
