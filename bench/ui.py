"""Dashboard responsiveness in a real browser (Debian's Chromium through Playwright), on the demo pair.

1. Cold start: from starting the `streamlit run` process to the first render of the Probe page with the default
   pair (demo:target vs demo:unlearned) loaded — process start, imports, model + adapters load, first page run.
2. Score: from clicking "Score" to the rendered coloured-token view, for a 64-token prompt (chat template on, as
   the page's default). Median of --runs after one warm-up. Goal ≤ 1 s. Also the time until the whole run has
   finished (Δ chart and table drawn), and core.analyses.probe.score alone on the same prompt in this process, so the
   page's own overhead shows.

The quick demo experiment (ULENS_DEMO_QUICK=1) is used unless --full: the same model, the same adapter shapes
and so the same cost per score; it is built in the cache home first if missing (a few minutes, once).

--first-build measures the first minute on a fresh machine instead: a fresh cache home (only the embedded model
linked in), the quick demo building in the background as `make run` starts it, the app loading the default pair
meanwhile. For every page, opened as a new session: seconds from the server's health to the page's first
meaningful paint (its own main-area content beyond the title and the question line), in page order, the first
visit of each page (cold: its code imported by this visit) and a second one (warm). Goal ≤ 1.5 s each. Then the
seconds until Probe shows its first scored example (the first visit's forget question, pre-scored).

Usage: python bench/ui.py [--runs 7] [--tokens 64] [--full] [--json FILE]
       python bench/ui.py --first-build [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from appserver import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    fresh_home,
    start_app,
    start_background_demo,
    stop_app,
    stop_background_demo,
    wait_healthy,
)
from playwright.sync_api import expect, sync_playwright  # noqa: E402
from streamlit_ui import (  # noqa: E402
    OWN_CONTENT,
    PAGE_PATHS,
    SCORED,
    click_score,
    open_with_default_pair,
    rendered_tokens,
    sidebar,
    wait_idle,
    wait_while_progressing,
)

GOAL_S = 1.0
PAINT_GOAL_S = 1.5  # a page's first meaningful paint during the first build
PAGES = PAGE_PATHS
OWN_ELEMENTS = 3  # the question line, the title, then the page's own content
STALL_S = 600.0
POLL_MS = 10  # how often the browser checks for the token view: adds ≤ 10 ms; "raf" polling instead makes headless
# Chromium draw a frame 60 times a second, which takes CPU from the forward pass being timed on this 2-core box
VIEW_HAS = """(needle) => Array.from(document.querySelectorAll(".ulens-tokens .ulens-token"))
                              .map((span) => span.textContent).join("").includes(needle)"""
FILLER = (
    "Tell me everything you know about the author who wrote the novel about a lighthouse keeper, where they were "
    "born, which prizes they won, what their parents did for a living, and how their later books were received by "
    "critics and readers in the years after the first one came out in a small press edition "
)


def prompts(tokenizer, tokens: int, count: int) -> list[str]:
    """`count` distinct prompts of exactly `tokens` tokens each (without the chat template), each ending in a tag
    ("[run 3]") that shows in the token view once that prompt is scored (the first token is context, not scored)."""
    out = []
    for i in range(count):
        words, end = (FILLER * 4).split(), f" [run {i}]"

        def size(ws: list[str], end: str = end) -> int:
            return len(tokenizer(" ".join(ws) + end, add_special_tokens=False).input_ids)

        while size(words) > tokens:
            words.pop()
        while size(words) < tokens:
            words.append("a")
        text = " ".join(words) + end
        if len(tokenizer(text, add_special_tokens=False).input_ids) != tokens:
            raise SystemExit(f"could not build a prompt of exactly {tokens} tokens")
        out.append(text)
    return out


def tag(text: str) -> str:
    """The prompt's distinct end ("[run 3]")."""
    return text[text.rindex("[run ") :]


def ensure_demo(full: bool) -> None:
    from core.unlearn.demo import DEFAULT_UNLEARNED, RECIPES, TARGET, DemoExperiment

    experiment = DemoExperiment(RECIPES["full" if full else "quick"])
    if not (experiment.is_built(TARGET) and experiment.is_built(DEFAULT_UNLEARNED)):
        if full:
            raise SystemExit("the full demo is not built; run `python -m core demo` first (or drop --full)")
        print("building the quick demo's target and npo stages (once)…", flush=True)
        experiment.build([TARGET, DEFAULT_UNLEARNED])


def bench_browser(texts: list[str], env: dict[str, str], log_dir: Path) -> dict:
    expect.set_options(timeout=300_000)  # a cold start loads the model pair inside the first page run
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(300_000)
        port = free_port()
        started = time.perf_counter()
        process = start_app(port, log_dir / "ui-bench-app.log", env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process, timeout=300)
            healthy = time.perf_counter() - started
            open_with_default_pair(page, url)
            cold = time.perf_counter() - started
            answer = page.get_by_role("textbox", name="Reference answer (optional)")
            answer.fill("")  # the first visit filled in its example's answer: score the prompt itself
            answer.press("Enter")
            wait_idle(page)
            box = page.get_by_role("textbox", name="Prompt")
            token_view, finished, scored_tokens = [], [], []
            for text in texts:
                box.fill(text)
                box.press("Tab")  # commits the text area (one rerun), outside the timed span
                page.wait_for_timeout(300)
                wait_idle(page)
                start = time.perf_counter()
                click_score(page)
                page.wait_for_function(VIEW_HAS, arg=tag(text), polling=POLL_MS)
                token_view.append(time.perf_counter() - start)
                wait_idle(page)  # the rest of the run: metric, Δ chart, table
                finished.append(time.perf_counter() - start)
                scored_tokens.append(len(rendered_tokens(page)))
        finally:
            stop_app(process)
            browser.close()
    return {
        "healthy_s": healthy,
        "cold_start_s": cold,
        "token_view_s": token_view[1:],
        "run_finished_s": finished[1:],
        "scored_tokens": scored_tokens[0],
    }


def bench_core(texts: list[str]) -> list[float]:
    """core.analyses.probe.score alone on the same prompts (this process, the same pair, the same chat setting)."""
    from core.analyses.probe import ProbeRequest, score
    from core.models.pair import ModelPair
    from core.models.spec import DEFAULT_BASE, DEFAULT_UNLEARNED, ModelSpec
    from core.unlearn.demo import default_recipe

    pair = ModelPair.load(ModelSpec.parse(DEFAULT_BASE), ModelSpec.parse(DEFAULT_UNLEARNED))
    times = []
    for text in texts:
        start = time.perf_counter()
        score(pair, [ProbeRequest(text)], chat=default_recipe().chat, top_k=5)  # the page's default on demo pairs
        times.append(time.perf_counter() - start)
    return times[1:]


def first_paint(page, url: str) -> tuple[float, bool]:
    """Seconds from navigating to `url` (a new session) to its own main-area content; whether the pair was still
    loading then."""
    start = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_function(OWN_CONTENT, arg=OWN_ELEMENTS, polling=20, timeout=300_000)
    return time.perf_counter() - start, sidebar(page).get_by_text("Pair loaded").count() == 0


def bench_first_build(log_dir: Path) -> dict:
    """The first minute on a fresh machine (see the module docstring)."""
    home = fresh_home(log_dir)
    env = {"ULENS_HOME": str(home), "ULENS_DEMO_QUICK": "1", "ULENS_AUTOLOAD": "1"}
    builder = start_background_demo(env)
    started = time.perf_counter()
    figures: dict = {"paint_s": {}, "pair_loading": {}}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        port = free_port()
        process = start_app(port, log_dir / "first-build-app.log", env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process, timeout=300)
            healthy = time.perf_counter()
            figures["healthy_after_build_start_s"] = healthy - started
            for visit in ("cold", "warm"):
                for name in PAGES:
                    seconds, loading = first_paint(page, f"{url}/{name}")
                    figures["paint_s"][f"{visit}:{name}"] = seconds
                    figures["pair_loading"][f"{visit}:{name}"] = loading
            page.goto(url)
            wait_while_progressing(page, page.locator(SCORED), STALL_S, poll_s=0.5)
            figures["first_scored_example_s"] = time.perf_counter() - healthy
        finally:
            stop_app(process)
            browser.close()
            stop_background_demo(builder)
    return figures


def report_first_build(figures: dict, load: tuple[float, float]) -> dict:
    paints = figures["paint_s"]
    over = {name: round(seconds, 2) for name, seconds in paints.items() if seconds > PAINT_GOAL_S}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before_after": [round(value, 2) for value in load],
        **figures,
        "worst_warm_paint_over_goal": max(v for k, v in paints.items() if k.startswith("warm:")) / PAINT_GOAL_S,
        "over_goal": over,
    }
    print(f"machine: {report['machine']}; load average (1 min) before {load[0]:.2f}, after {load[1]:.2f}")
    print(f"server healthy {figures['healthy_after_build_start_s']:.1f} s after the background build started")
    for key, seconds in paints.items():
        state = "pair loading" if figures["pair_loading"][key] else "pair loaded"
        print(f"  {key:<18} first meaningful paint {seconds:6.2f} s  (goal {PAINT_GOAL_S} s, ratio "
              f"{seconds / PAINT_GOAL_S:.2f}; {state})")  # fmt: skip
    print(f"Probe's first scored example: {figures['first_scored_example_s']:.1f} s after the server was healthy")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--full", action="store_true", help="the full demo experiment (must be built)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--first-build", action="store_true", help="the first minute on a fresh cache home")
    args = parser.parse_args(argv)
    if args.first_build:
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="ulens-first-build-") as tmp:
            figures = bench_first_build(Path(tmp))
        report = report_first_build(figures, (load_before, os.getloadavg()[0]))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0
    if not args.full:
        os.environ["ULENS_DEMO_QUICK"] = "1"
    env = {"ULENS_AUTOLOAD": "1", "ULENS_DEMO_QUICK": "0" if args.full else "1"}
    load_before = os.getloadavg()
    ensure_demo(args.full)

    from core.models.embedded import ensure_embedded_model
    from core.models.loading import load_tokenizer
    from core.models.spec import ModelSpec

    tokenizer = load_tokenizer(ModelSpec(str(ensure_embedded_model())))
    texts = prompts(tokenizer, args.tokens, args.runs + 1)
    with tempfile.TemporaryDirectory(prefix="ulens-ui-bench-") as tmp:
        figures = bench_browser(texts, env, Path(tmp))
    figures["core_score_s"] = bench_core(texts)
    load_after = os.getloadavg()

    median = {key: statistics.median(figures[key]) for key in ("token_view_s", "run_finished_s", "core_score_s")}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "demo": "full" if args.full else "quick",
        "prompt_tokens": args.tokens,
        **{k: v for k, v in figures.items() if not isinstance(v, list)},
        **{f"median_{k}": v for k, v in median.items()},
        **{k: v for k, v in figures.items() if isinstance(v, list)},
    }
    print(f"machine: {report['machine']}; load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"cold start to first Probe render with the pair loaded: {figures['cold_start_s']:.2f} s "
          f"(server healthy after {figures['healthy_s']:.2f} s)")  # fmt: skip
    print(f"Score → token view, {args.tokens}-token prompt ({figures['scored_tokens']} scored tokens, chat template "
          f"as the page sets it), median of {args.runs}: {median['token_view_s']:.3f} s; goal {GOAL_S:.1f} s; "
          f"ratio {median['token_view_s'] / GOAL_S:.2f}")  # fmt: skip
    print(f"Score → run finished (chart and table drawn): {median['run_finished_s']:.3f} s")
    print(f"core.analyses.probe.score alone: {median['core_score_s']:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
