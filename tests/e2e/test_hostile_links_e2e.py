"""Hostile links in a real Chromium: a Tradeoffs link to a folder outside the data roots shows none of its results
(only a question, with the path as text), and a Probe link whose value is markdown shows that value as typed,
with no image loaded from it.

The app is the shared `app_url` server; it has the test process's environment, so the data roots are the same
here (core.evaluation.results.inside_roots says whether a folder is outside them).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import Page, expect
from streamlit_ui import wait_idle

from core.evaluation.results import inside_roots

SECRET_METRIC, SECRET_VALUE = "canary_metric_5e1d", 0.7318281
IMAGE = "http://127.0.0.1:9/x.png"  # the discard port: nothing answers, and nothing may ask


def test_a_tradeoffs_link_outside_the_roots_reads_nothing(page: Page, app_url: str, tmp_path: Path) -> None:
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    data = {"forget_Q_A_Prob": 0.25, "model_utility": 0.5, SECRET_METRIC: SECRET_VALUE}
    (run / "secret_SUMMARY.json").write_text(json.dumps(data))
    folder = run.parent
    assert not inside_roots(folder), "the test folder must lie outside the app's data roots (ULENS_DATA_ROOTS?)"

    page.goto(f"{app_url}/tradeoffs?{urlencode({'folder': str(folder)})}")
    expect(page.get_by_text("This link names folders outside the data roots", exact=False)).to_be_visible()
    expect(page.get_by_test_id("stText").filter(has_text=str(folder))).to_be_visible()
    expect(page.get_by_role("button", name="Read these folders")).to_be_visible()
    wait_idle(page)
    content = page.content()
    assert SECRET_METRIC not in content and str(SECRET_VALUE) not in content
    assert page.locator(".js-plotly-plot").count() == 0


def test_a_markdown_value_in_a_probe_link_is_shown_as_typed(page: Page, app_url: str) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    hostile = f"![x]({IMAGE})"
    page.goto(f"{app_url}/?{urlencode({'chat': hostile})}")
    warning = page.get_by_test_id("stAlertContentWarning")
    expect(warning).to_be_visible()
    wait_idle(page)
    assert warning.inner_text().strip() == f"Ignored from the link: chat={hostile!r} (use 1 or 0)."
    assert page.locator(f"img[src='{IMAGE}']").count() == 0
    assert warning.locator("img").count() == 0
    assert IMAGE not in requested
