"""The Tradeoffs page in a real Chromium: load the real open-unlearning outputs, see the chart, click a checkpoint."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlparse

import pandas as pd
from playwright.sync_api import Page, expect
from streamlit_ui import PLOT, go_to, page_shot, wait_idle

from core.evaluation.ingest import REFERENCE_METHODS, ingest
from core.evaluation.results import (
    EXAMPLE_RESULTS,
    Point,
    default_axes,
    has_points,
    metric_options,
    our_result_folders,
    result_paths,
)
from core.present.figures.tradeoffs import tradeoff_points


def test_tradeoff_chart_from_the_example_results(page: Page, app_url: str, shot_dir):
    page.goto(app_url)
    go_to(page, "Tradeoffs")
    folders = page.get_by_test_id("stExpander").filter(has_text="Result folders")
    expect(folders).to_be_visible()
    example = page.get_by_role("button", name="Use the example: real open-unlearning outputs")
    if not example.is_visible():  # the page opened on results by itself, with its folder inputs folded away
        folders.locator("summary").click()
    example.click()
    expect(page.get_by_role("textbox", name="Result folders or files, one per line")).to_have_value(
        str(EXAMPLE_RESULTS)
    )
    page.get_by_role("button", name="Load results").click()
    chart = page.locator(".js-plotly-plot").first
    expect(chart.locator(".main-svg").first).to_be_visible()
    wait_idle(page)

    # what the page read equals what core.evaluation.ingest reads from the same folders here
    expected = ingest(result_paths([str(f) for f in our_result_folders()], str(EXAMPLE_RESULTS), [], "uploaded"))
    runs = expected.runs()
    caption = f"{runs['model'].nunique()} runs, {len(runs)} evaluations from {len(expected.files)} files."
    expect(page.get_by_text(caption)).to_be_visible()
    x, y = default_axes(metric_options(expected.summary), expected.summary)
    expect(chart.locator(".gtitle")).to_have_text(f"{y} vs {x}")
    assert chart.locator(".scatterlayer .trace .points path").count() > 0
    page_shot(page, shot_dir / "pages" / "tradeoffs.png")

    # clicking a point opens that checkpoint's metrics
    point = chart.locator(".scatterlayer .trace .points path").first
    point.click(force=True)
    expect(page.get_by_role("heading", name="Selected checkpoint")).to_be_visible()
    wait_idle(page)
    points = tradeoff_points(expected.summary, x, y)
    is_reference = points["method"].isin(REFERENCE_METHODS)
    if (~is_reference).any():  # the first trace: the first run's line, else the first reference's final marker
        (method, model), first = next(iter(points[~is_reference].groupby(["method", "model"], sort=True)))
        step = first.iloc[0]["step"]
    else:
        (method, model), first = next(iter(points[is_reference].groupby(["method", "model"], sort=True)))
        step = first.iloc[-1]["step"]
    clicked = Point(model, method, None if pd.isna(step) else int(step))
    expect(page.get_by_test_id("stText").filter(has_text=clicked.label).first).to_be_visible()
    assert page.locator(PLOT).count() >= 2  # the split bars join the tradeoff chart
    page_shot(page, shot_dir / "tradeoffs-checkpoint.png")


def test_a_tradeoffs_link_reloads_the_folders_and_axes(page: Page, app_url: str):
    """The link written after loading names the folder and axes; editing its y axis and opening it shows that
    chart straight away, with no clicks."""
    summary = ingest([EXAMPLE_RESULTS]).summary
    options = metric_options(summary)
    x, y = default_axes(options, summary)
    other = next(m for m in options if m not in (x, y) and has_points(summary, x, m))
    page.goto(f"{app_url}/tradeoffs?{urlencode({'folder': str(EXAMPLE_RESULTS), 'x': x, 'y': other})}")
    chart = page.locator(".js-plotly-plot").first
    expect(chart.locator(".gtitle")).to_have_text(f"{other} vs {x}")
    wait_idle(page)
    written = parse_qs(urlparse(page.url).query)
    assert written["folder"] == [str(EXAMPLE_RESULTS)] and written["x"] == [x] and written["y"] == [other]
