"""The Dataset page in a real Chromium: score the demo forget split under the demo pair; the summary numbers equal
core.analyses.probe's scores computed here, and a selected item opens in Probe, scored."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from streamlit_ui import (
    go_to,
    is_on,
    metric_number,
    metric_value,
    open_with_default_pair,
    page_shot,
    wait_idle,
    wait_scored,
)

from core.analyses.probe import ProbeRequest, score
from core.data.qa import load_demo_splits

ITEMS = 6  # the first items of the demo forget split (all of them with perturbed answers)


def test_demo_forget_split_scores_and_opens_in_probe(page: Page, demo_app_url: str, demo_pair, shot_dir):
    split = load_demo_splits().forget
    forget = split.items[:ITEMS]
    open_with_default_pair(page, demo_app_url)
    go_to(page, "Dataset")
    expect(page.get_by_text(f"{len(split)} items;")).to_be_visible()
    items = page.get_by_role("spinbutton", name="Items")
    items.fill(str(ITEMS))
    items.press("Enter")
    expect(items).to_have_value(str(ITEMS))
    chat = is_on(page, "Chat template")
    page.get_by_role("button", name="Compute per-item metrics").click()
    expect(page.get_by_text(f"Scored {len(forget)} items")).to_be_visible()
    wait_idle(page)

    results = score(demo_pair, [ProbeRequest(item.question, item.answer) for item in forget], chat=chat, top_k=1)
    assert metric_value(page, "Items scored") == str(len(forget))
    mean_delta = float(np.mean([r.delta for r in results]))
    assert metric_number(page, "Mean Δ log-prob") == pytest.approx(mean_delta, abs=1e-3)
    assert mean_delta < 0  # the demo's forget set lost probability under the unlearned model
    page_shot(page, shot_dir / "pages" / "dataset.png")

    # select the first row (its row-marker checkbox on the grid's canvas), then open it in Probe
    grid = page.get_by_test_id("stDataFrame").last
    grid.scroll_into_view_if_needed()  # the results header was scrolled to the top; the grid's rows are in view
    wait_idle(page)
    box = grid.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)
    expect(page.get_by_test_id("stText").filter(has_text=forget[0].question)).to_be_visible()
    page.get_by_role("button", name="Open in Probe").click()
    expect(page.get_by_role("textbox", name="Prompt")).to_have_value(forget[0].question)
    expect(page.get_by_role("textbox", name="Reference answer (optional)")).to_have_value(forget[0].answer)
    wait_scored(page)  # an item opened from Dataset is scored at once
    assert metric_number(page, "Answer log-prob Δ") == pytest.approx(results[0].delta, abs=1e-3)
