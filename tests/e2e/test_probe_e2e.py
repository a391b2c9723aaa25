"""The Probe page in a real Chromium: load a pair, score, see coloured tokens; injected HTML stays text."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.e2e
INJECTION = "<img src=x onerror=\"document.title='pwned'\"> What is the capital of France?"


def load_pair(page: Page, url: str, base: str, unlearned: str) -> None:
    page.goto(url)
    sidebar = page.locator("section[data-testid='stSidebar']")
    sidebar.get_by_role("textbox", name="Base model").fill(base)
    sidebar.get_by_role("textbox", name="Unlearned model").fill(unlearned)
    sidebar.get_by_role("button", name="Load pair").click()
    expect(sidebar.get_by_text("Pair loaded")).to_be_visible(timeout=120_000)


def probe(page: Page, prompt: str, answer: str) -> None:
    page.get_by_role("textbox", name="Prompt").fill(prompt)
    page.get_by_role("textbox", name="Reference answer (optional)").fill(answer)
    page.get_by_role("textbox", name="Reference answer (optional)").press("Enter")
    page.get_by_role("button", name="Score", exact=True).click()
    expect(page.locator(".ulens-token").first).to_be_visible(timeout=120_000)


def test_probe_same_model_and_html_injection(page: Page, app_url: str, embedded_model_dir, shot_dir):
    load_pair(page, app_url, str(embedded_model_dir), str(embedded_model_dir))
    probe(page, INJECTION, "Paris")
    tokens = page.locator(".ulens-token")
    deltas = [float(tokens.nth(i).get_attribute("data-delta")) for i in range(tokens.count())]
    assert deltas and all(d == 0.0 for d in deltas)  # the same model on both sides shifts nothing
    context = page.locator(".ulens-context").first
    expect(context).to_contain_text("<img src=x onerror=")
    assert page.locator(".ulens-tokens img").count() == 0
    assert page.title() != "pwned"
    page.screenshot(path=str(shot_dir / "probe-injection.png"), full_page=True)
