"""The Layers page's activation patching in a real Chromium on the demo pair: for a forget question the patching
chart is drawn, its reading shown, and the table's first and last rows are core's patched log-probs."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect
from streamlit_ui import PLOT, choose, go_to, is_on, open_with_default_pair, page_shot, wait_idle

from core.analyses.patching import patch_curve
from core.present.figures.layers import causal_reading


def test_patching_curve_and_reading_for_a_forget_question(
    page: Page, demo_app_url: str, quick_demo, demo_pair, shot_dir
):
    item = quick_demo.data.forget.items[0]
    open_with_default_pair(page, demo_app_url)
    go_to(page, "Layers")
    choose(page, "Example from the demo forget / retain sets", f"forget · {item.question}")
    expect(page.get_by_role("textbox", name="Answer")).to_have_value(item.answer)
    chat = is_on(page, "Chat template")
    page.get_by_role("button", name="Run activation patching").click()
    expect(page.get_by_text("Activation patching (all positions)").first).to_be_attached()
    expect(page.locator(PLOT).first).to_be_visible()
    wait_idle(page)
    expected = patch_curve(demo_pair, item.question, item.answer, chat)
    reading = causal_reading(expected)
    shown = page.get_by_test_id("stAlert").all_inner_texts()
    assert any(reading.split(":")[0] in text for text in shown), shown
    title = page.get_by_text(re.compile(r"Activation patching \(.*\): depth score")).first.text_content() or ""
    assert f"{expected.depth_score:.2f}" in title
    page_shot(page, shot_dir / "pages" / "layers-patching.png")
