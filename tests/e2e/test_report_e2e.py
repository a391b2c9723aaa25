"""The HTML report opened from disk in the real Chromium with every non-file request blocked: it draws every chart,
asks the network for nothing, and injected markup in prompts and notes stays text."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect
from tiny_models import TinyTokenizer, make_tiny_llama

from core.analyses.probe import ProbeRequest
from core.evaluation.ingest import ingest
from core.models.pair import ModelPair
from core.present.report.model import Report, build_report

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
SCRIPT = "<script>window.__pwned = 1</script>"
IMAGE = '<img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def report() -> Report:
    pair = ModelPair.from_models(make_tiny_llama(seed=0), make_tiny_llama(seed=1), TinyTokenizer())
    results = ingest(
        [FIXTURES / "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"],
        oracle=FIXTURES / "tofu_Llama-3.2-1B-Instruct_retain90",
    )
    probes = [ProbeRequest(f"Who wrote {SCRIPT}?", "Jane Doe"), ProbeRequest(f"{IMAGE} The sky is", None)]
    return build_report(
        pair, results=results, probes=probes, with_attribution=True, with_lens=True, notes=f"Notes {SCRIPT}\n{IMAGE}"
    )


def test_report_renders_every_chart_offline_and_keeps_injections_as_text(
    page: Page, report: Report, tmp_path: Path, shot_dir: Path
) -> None:
    path = report.write(tmp_path / "report.html")
    requested, blocked, page_errors = [], [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    def only_files(route: Route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_files)
    page.goto(path.as_uri())
    charts = page.locator("div.chart")
    expect(charts).to_have_count(len(report.charts()))
    page.wait_for_function(
        "() => [...document.querySelectorAll('div.chart')].every(div => div.querySelector('svg.main-svg'))"
    )
    drawn = page.evaluate("() => [...document.querySelectorAll('div.chart')].map(div => div.data.length)")
    assert drawn == [len(chart.figure.data) for chart in report.charts()]
    assert blocked == [] and [url for url in requested if not url.startswith("file:")] == []
    assert requested == [path.as_uri()]  # the file itself and nothing else (not even the injected <img src=x>)
    assert page_errors == []
    assert page.evaluate("typeof window.__pwned") == "undefined"
    expect(page.locator("#section-notes")).to_contain_text(SCRIPT)
    expect(page.locator("#section-notes")).to_contain_text(IMAGE)
    expect(page.locator("#probe-1 .qa")).to_contain_text(SCRIPT)
    assert page.locator("#section-notes img, #section-probes img").count() == 0
    page.screenshot(path=str(shot_dir / "report.png"), full_page=True)
