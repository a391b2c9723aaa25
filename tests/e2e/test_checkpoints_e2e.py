"""The Checkpoints page in a real Chromium on the quick demo: every NPO checkpoint's answer log-prob drawn against
training step, a click on one checkpoint makes it the unlearned model, and the Probe page then scores against it
(compared with core.analyses.probe on that pair, computed in the test process)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from streamlit_ui import (
    PLOT,
    SCORED,
    click_score,
    fill_probe,
    go_to,
    open_with_default_pair,
    page_shot,
    rendered_tokens,
    sidebar,
    wait_idle,
    wait_scored,
)

from core.analyses.multi import ModelEntry, ModelSet, probe_many
from core.analyses.probe import ProbeRequest, score
from core.models.pair import ModelPair
from core.models.spec import ModelSpec

TOLERANCE = 1e-3  # the browser gets the figure's numbers as JSON floats; the page shows 3 decimals elsewhere
CLICKED_STEP = 3
DEMO_TEMPLATE_OPTIONS = {"dtype": "auto", "device": "auto"}  # what the sidebar's defaults load (as e2e/conftest.py)
# A pair load (the backbone and two adapters) took over the suite's 120 s action timeout while this 2-core machine ran
# other helpers' jobs (load average above 30): the loads this test waits for get 10 minutes.
LOAD_TIMEOUT_MS = 600_000


def wait_for_pair(page: Page) -> None:
    """Wait for the session's pair to be loaded (the sidebar says so), then for the run to end."""
    expect(sidebar(page).get_by_text("Pair loaded")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    wait_idle(page)


def test_click_a_checkpoint_then_probe_uses_it(page: Page, demo_app_url: str, quick_demo, shot_dir) -> None:
    item = quick_demo.data.forget.items[0]
    page.goto(demo_app_url)
    wait_for_pair(page)
    open_with_default_pair(page, demo_app_url)
    go_to(page, "Checkpoints")
    page.get_by_role("textbox", name="Prompt").fill(item.question)
    answer = page.get_by_role("textbox", name="Answer", exact=True)
    answer.fill(item.answer)
    answer.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Probe every model").click()
    chart = page.locator(".stPlotlyChart").first
    expect(chart.locator(PLOT).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)  # the set loads first
    wait_idle(page)
    run_points = chart.locator(".scatterlayer .trace").first.locator(".points path")
    steps = list(quick_demo.checkpoints("npo"))
    expect(run_points).to_have_count(len(steps))  # one marker per NPO checkpoint, in step order

    # the drawn trajectory equals the probe across the same models computed here
    template = ModelSpec("demo:x", **DEMO_TEMPLATE_OPTIONS)
    entries = [ModelEntry(quick_demo.spec(f"npo@{s}", template), f"npo@{s}", "npo", s) for s in steps]
    want = probe_many(
        ModelSet.load(quick_demo.spec("target", template), entries), ProbeRequest(item.question, item.answer)
    )
    drawn = page.evaluate("() => document.querySelector('.stPlotlyChart .js-plotly-plot').data[0].y")
    assert drawn == pytest.approx(want.answer_logprobs(), abs=TOLERANCE)
    page_shot(page, shot_dir / "checkpoints.png")

    run_points.nth(steps.index(CLICKED_STEP)).click(force=True)
    expect(page.get_by_text(f"npo@{CLICKED_STEP} is now the unlearned model")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    wait_for_pair(page)
    expect(sidebar(page).get_by_role("textbox", name="Unlearned model")).to_have_value(f"demo:npo@{CLICKED_STEP}")

    go_to(page, "Probe")
    fill_probe(page, item.question, item.answer)
    before = click_score(page)
    expect(page.locator(SCORED).first).to_be_visible(timeout=LOAD_TIMEOUT_MS)
    wait_scored(page, after=before)
    pair = ModelPair.load(quick_demo.spec("target", template), quick_demo.spec(f"npo@{CLICKED_STEP}", template))
    expected = score(pair, [ProbeRequest(item.question, item.answer)], chat=quick_demo.recipe.chat)[0]
    # the first token view is this probe's (the page may show another example's tokens after it)
    tokens = rendered_tokens(page)[: len(expected.tokens)]
    assert [t["text"] for t in tokens] == [t.token for t in expected.tokens]
    assert [t["delta"] for t in tokens] == pytest.approx([t.delta for t in expected.tokens], abs=TOLERANCE)
