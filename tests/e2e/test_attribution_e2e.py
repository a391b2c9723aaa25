"""The Attribution and Layers pages in a real Chromium on the demo pair: for a forget question, attribution draws
its heatmap with the answer log-probs core.analyses.probe gives here; the logit lens draws its chart and reading; a
map that does not add up is flagged next to it; every method's faithfulness curves are drawn with their reading."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from streamlit_ui import (
    PLOT,
    choose,
    click_score,
    go_to,
    is_on,
    open_with_default_pair,
    page_shot,
    wait_idle,
    wait_scored,
)

from core.analyses.probe import ProbeRequest, score

CAPTION = re.compile(r"Answer log-prob: base (-?\d+\.\d+), unlearned (-?\d+\.\d+) \(Δ ([+-]\d+\.\d+)\)")


def test_attribution_heatmap_and_logit_lens_for_a_forget_question(
    page: Page, demo_app_url: str, quick_demo, demo_pair, shot_dir
):
    item = quick_demo.data.forget.items[0]
    open_with_default_pair(page, demo_app_url)
    choose(page, "Example from the demo forget / retain sets", f"forget · {item.question}")
    expect(page.get_by_role("textbox", name="Reference answer (optional)")).to_have_value(item.answer)
    wait_scored(page, after=click_score(page))  # the first visit scored these inputs already: wait for this scoring

    go_to(page, "Attribution")
    choose(page, "Example from the demo forget / retain sets", f"forget · {item.question}")
    expect(page.get_by_role("textbox", name="Prompt")).to_have_value(item.question)
    expect(page.get_by_role("textbox", name="Answer")).to_have_value(item.answer)
    chat = is_on(page, "Chat template")
    choose(page, "Method", "input x gradient")  # the cheapest method: one forward and one backward per side
    page.get_by_role("button", name="Compute", exact=True).click()
    heatmap = page.locator(".js-plotly-plot").first
    expect(heatmap.locator(".main-svg").first).to_be_visible()
    expect(heatmap.locator(".heatmaplayer image, .heatmaplayer .hm").first).to_be_attached()
    wait_idle(page)
    expected = score(demo_pair, [ProbeRequest(item.question, item.answer)], chat=chat, top_k=1)[0]
    match = CAPTION.search(page.get_by_text("Answer log-prob: base").first.inner_text())
    assert match, "no answer log-prob caption"
    base, unlearned, delta = (float(v) for v in match.groups())
    assert base == pytest.approx(expected.answer_logprob_base, abs=1e-3)
    assert unlearned == pytest.approx(expected.answer_logprob_unlearned, abs=1e-3)
    assert delta == pytest.approx(expected.delta, abs=1e-3) and delta < 0
    page_shot(page, shot_dir / "pages" / "attribution.png")

    go_to(page, "Layers")
    choose(page, "Example from the demo forget / retain sets", f"forget · {item.question}")
    expect(page.get_by_role("textbox", name="Answer")).to_have_value(item.answer)
    page.get_by_role("button", name="Run the logit lens").click()
    expect(page.locator(PLOT).first).to_be_visible()
    expect(page.get_by_text("The unlearned model").first).to_be_visible()  # the hidden-knowledge reading
    wait_idle(page)
    page_shot(page, shot_dir / "pages" / "layers.png")


def test_junk_map_is_flagged_and_methods_are_compared(page: Page, demo_app_url: str, quick_demo, demo_pair):
    """Integrated gradients with one step cannot add up on a real model: the page says so next to the map, with the
    remedy; 'Compare every method' draws the curves and names the most faithful map, as core computes it."""
    from core.analyses.attribution import AttributionSettings, attribute
    from core.analyses.attribution.settings import default_baseline
    from core.present.figures.attribution import completeness_warning

    item = quick_demo.data.forget.items[0]
    open_with_default_pair(page, demo_app_url)
    go_to(page, "Attribution")
    choose(page, "Example from the demo forget / retain sets", f"forget · {item.question}")
    expect(page.get_by_role("textbox", name="Answer")).to_have_value(item.answer)
    chat = is_on(page, "Chat template")
    choose(page, "Method", "integrated gradients")
    steps = page.get_by_role("spinbutton", name="IG steps")
    steps.fill("1")
    steps.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Compute", exact=True).click()
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    wait_idle(page)
    baseline = default_baseline(demo_pair.tokenizer)  # the page's defaults
    settings = AttributionSettings(n_steps=1, granularity="word", baseline=baseline)
    expected = completeness_warning(attribute(demo_pair, item.question, item.answer, chat=chat, settings=settings))
    assert expected is not None
    expect(page.get_by_text("This map does not add up").first).to_be_visible()
    expect(page.get_by_text("raise the IG steps (now 1)").first).to_be_visible()

    page.get_by_role("button", name="Compare every method").click()
    expect(page.get_by_text("The map that explains each model's behaviour best").first).to_be_visible(timeout=600_000)
    wait_idle(page)
    assert page.locator(".js-plotly-plot").count() >= 2
