"""Playwright helpers for the dashboard's pages: navigate, wait for Streamlit, drive the Probe page, read results.

Shared by the e2e tests and bench/ui.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from appserver import IDLE
from playwright.sync_api import Locator, Page, expect

SCORED = ".ulens-tokens .ulens-token"
PLOT = ".js-plotly-plot .main-svg"
ANSWER_DELTA = "Answer log-prob Δ (unlearned − base)"


def wait_idle(page: Page) -> None:
    """Wait until the page's script run has finished (use after a condition that proves the run started)."""
    page.locator(IDLE).wait_for(state="attached")


def sidebar(page: Page) -> Locator:
    return page.locator("section[data-testid='stSidebar']")


def go_to(page: Page, title: str) -> None:
    """Open a page through the sidebar navigation (the browser session, and so the loaded pair, is kept)."""
    sidebar(page).get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
    expect(page.get_by_role("heading", name=title, exact=True).first).to_be_visible()
    wait_idle(page)


def load_pair(page: Page, url: str, base: str, unlearned: str) -> None:
    page.goto(url)
    bar = sidebar(page)
    bar.get_by_role("textbox", name="Base model").fill(base)
    bar.get_by_role("textbox", name="Unlearned model").fill(unlearned)
    bar.get_by_role("button", name="Load pair").click()
    expect(bar.get_by_text("Pair loaded")).to_be_visible()
    wait_idle(page)


def open_with_default_pair(page: Page, url: str) -> None:
    """Open the app where the default pair loads by itself (ULENS_AUTOLOAD=1); return once Probe can score (the
    pair loaded and the first visit's example scored)."""
    page.goto(url)
    expect(sidebar(page).get_by_text("Pair loaded")).to_be_visible()
    expect(page.get_by_role("button", name="Score", exact=True)).to_be_enabled()
    wait_idle(page)


def fill_probe(page: Page, prompt: str, answer: str = "") -> None:
    """Type the prompt and the reference answer (Enter commits the answer box, as a user does), then wait for the
    rerun that starts: a Score click made during it can score the inputs from before the commit (docs/ARCHITECTURE.md,
    known and not solved)."""
    page.get_by_role("textbox", name="Prompt").fill(prompt)
    box = page.get_by_role("textbox", name="Reference answer (optional)")
    box.fill(answer)
    box.press("Enter")
    wait_idle(page)


def scorings(page: Page) -> int:
    """The highest scoring number drawn on the page (Probe's token views carry data-scoring; 0 when none)."""
    return page.evaluate(
        "() => Math.max(0, ...Array.from(document.querySelectorAll('[data-scoring]'), (e) => +e.dataset.scoring))"
    )


def click_score(page: Page) -> int:
    """Click Score; return the scorings drawn before the click, for `wait_scored(page, after=…)`."""
    before = scorings(page)
    page.get_by_role("button", name="Score", exact=True).click()
    return before


def wait_scored(page: Page, contains: str | None = None, after: int | None = None) -> None:
    """Wait for the coloured token view and the run's end. `after`: a view drawn by a later scoring than that
    number (click_score's answer), so a rescoring of the inputs already on screen is waited for too; `contains`:
    a view holding that text in its scored tokens."""
    if after is not None:
        page.wait_for_function(
            "(n) => Array.from(document.querySelectorAll('[data-scoring]')).some((e) => +e.dataset.scoring > n)",
            arg=after,
            polling="raf",
        )
    if contains is None:
        expect(page.locator(SCORED).first).to_be_visible()
    else:
        page.wait_for_function(
            """(needle) => Array.from(document.querySelectorAll(".ulens-tokens .ulens-token"))
                                .map((span) => span.textContent).join("").includes(needle)""",
            arg=contains,
            polling="raf",
        )
    wait_idle(page)


def rendered_tokens(page: Page) -> list[dict[str, str | float]]:
    """Each scored token span of the first token view (the inputs' own; Probe's first visit draws the retain example
    beside it): its text, data-delta, data-position and background colour."""
    view = page.locator(".ulens-tokens").filter(has=page.locator(".ulens-token")).first
    return view.locator(".ulens-token").evaluate_all(
        """(spans) => spans.map((span) => ({
            text: span.textContent,
            delta: parseFloat(span.dataset.delta),
            position: parseInt(span.dataset.position),
            background: span.style.background,
        }))"""
    )


def metric_value(page: Page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(has_text=label)
    return metric.get_by_test_id("stMetricValue").first.inner_text().strip()  # the inputs' own (Probe draws two)


def metric_number(page: Page, label: str) -> float:
    return float(metric_value(page, label).replace("−", "-"))


def rgb(css: str) -> tuple[int, int, int]:
    match = re.search(r"rgb\((\d+),\s*(\d+),\s*(\d+)\)", css)
    assert match, f"no rgb colour in {css!r}"
    r, g, b = (int(v) for v in match.groups())
    return r, g, b


def is_on(page: Page, label: str) -> bool:
    """The state of the checkbox or toggle labelled `label`."""
    return page.get_by_test_id("stCheckbox").filter(has_text=label).locator("input").first.is_checked()


def open_examples(page: Page) -> bool:
    """Open Probe's Examples popover (its pills and picker); False on a page without one."""
    opener = page.get_by_test_id("stPopover").filter(has_text="Examples").locator("button")
    if opener.count() == 0:
        return False
    opener.first.click()
    return True


def choose(page: Page, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label`, then wait for the rerun it starts to end, as a person who
    looks at what the pick filled in does. A click during that rerun sends the inputs as they were, and a fragment's
    rerun arriving during it can break Streamlit 1.67's frontend (docs/ARCHITECTURE.md, known and not solved); the
    quick click is tested on its own (test_score_clicked_right_after_an_example_pill_loses_nothing)."""
    box = page.get_by_test_id("stSelectbox").filter(has_text=label)
    opened = not box.first.is_visible() and open_examples(page)  # Probe keeps its demo picker in a popover
    box.locator("input").click()
    page.get_by_role("option", name=option, exact=True).click()
    if opened:
        page.keyboard.press("Escape")  # close the popover again, as a user does, so it covers nothing
    wait_idle(page)


def page_shot(page: Page, path: Path, max_height: int = 4000) -> None:
    """A screenshot of the whole page. Streamlit scrolls inside its main container (a full-page screenshot sees
    only the viewport), so the viewport is grown to the content's height for the shot, then put back."""
    size = page.viewport_size or {"width": 1280, "height": 900}
    height = page.evaluate(
        """() => Math.max(document.documentElement.scrollHeight, ...Array.from(document.querySelectorAll(
            '[data-testid="stMain"], [data-testid="stMainBlockContainer"], [data-testid="stAppViewContainer"]'
        )).map((element) => element.scrollHeight))"""
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": size["width"], "height": min(max_height, max(size["height"], height))})
    try:
        page.wait_for_timeout(500)  # charts follow the new size
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)


# Every page's URL path, in the app's order (dashboard/app.py PAGES); each page's title is the path capitalised
PAGE_PATHS = ("probe", "attribution", "layers", "dataset", "tradeoffs", "screen", "checkpoints", "robustness", "report")
MAIN = "[data-testid='stMain']"
MAIN_ELEMENTS = f"{MAIN} [data-testid='stElementContainer']"
PROGRESS = "[data-testid='stProgress']"
OWN_CONTENT = """(count) => document.querySelectorAll("[data-testid='stMain'] [data-testid='stElementContainer']")
                               .length >= count"""
EMOJI_ONLY = r"""() => {
    const emoji = /^[\p{Extended_Pictographic}\u{1F1E6}-\u{1F1FF}\uFE0F\u200D\s]+$/u;
    return Array.from(document.querySelectorAll("body *"))
        .filter((element) => element.children.length === 0 && element.textContent.trim()
                             && emoji.test(element.textContent.trim()))
        .map((element) => element.outerHTML.slice(0, 200));
}"""


def progress_state(page: Page) -> list[str]:
    """The text and value of every progress bar on the page (the sidebar's and the main area's)."""
    return page.locator(PROGRESS).evaluate_all(
        """(bars) => bars.map((bar) => bar.innerText + " " +
            (bar.querySelector("[role='progressbar']")?.getAttribute("aria-valuenow") ?? ""))"""
    )


def wait_while_progressing(page: Page, done: Locator, stall_s: float, poll_s: float = 2.0) -> float:
    """Wait until `done` is visible, for as long as the page shows progress: fail once neither a progress bar's
    text nor its value has changed for `stall_s` seconds (the work stopped), however slow the machine is.
    Returns the seconds waited."""
    start = time.monotonic()
    last, changed = None, start
    while not done.first.is_visible():
        state = progress_state(page)
        if state != last:
            last, changed = state, time.monotonic()
        assert time.monotonic() - changed < stall_s, f"no progress for {stall_s:.0f} s; last shown: {last}"
        page.wait_for_timeout(poll_s * 1000)
    return time.monotonic() - start
