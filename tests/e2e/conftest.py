"""End-to-end fixtures: the real app on a free port, driven by Debian's Chromium through Playwright.

Two apps: `app_url` starts with no pair loaded (ULENS_AUTOLOAD=0; tests load their own), `demo_app_url` runs the
quick demo experiment (ULENS_DEMO_QUICK=1) and loads the default pair demo:target vs demo:unlearned in every new
session. The quick demo is built in the cache home before that app starts (once; later runs reuse the cache), and
`demo_pair` is the same pair loaded in the test process, to compare what the browser shows with core.analyses.probe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appserver import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    free_port,
    fresh_home,
    start_app,
    start_background_demo,
    stop_app,
    stop_background_demo,
    wait_healthy,
)
from playwright.sync_api import BrowserContext, expect

OUTPUT = ROOT / "test-output" / "e2e"
ACTION_TIMEOUT_MS = 120_000  # this CPU is slow and shared: a model load or a scoring run can take a while
DEMO_TEMPLATE_OPTIONS = {"dtype": "auto", "device": "auto"}  # what the sidebar's defaults load

expect.set_options(timeout=ACTION_TIMEOUT_MS)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """Use the system Chromium (never a downloaded browser); a missing one fails the suite, it does not skip."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make test installs it: apt-get install chromium)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture
def context(context: BrowserContext) -> BrowserContext:
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    return context


RUNNING: dict[Path, subprocess.Popen] = {}  # the apps up now, by log file: a failing test reports what they were doing
LOG_TAIL_LINES = 120


def serve(log_name: str, env: dict[str, str], **launch: Any) -> Iterator[str]:
    """Start the app (`launch`: start_app's cwd / console_script), yield its URL, stop it."""
    port = free_port()
    log_path = OUTPUT / log_name
    process = start_app(port, log_path, env, **launch)
    url = f"http://127.0.0.1:{port}"
    RUNNING[log_path] = process
    try:
        wait_healthy(url, process)
        yield url
    finally:
        RUNNING.pop(log_path, None)
        stop_app(process)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed browser test carries the tail of every running app's log, after asking each server for its threads'
    stacks (dashboard/boundary.py: SIGUSR1), so a page that hung on a CI machine says where it waited."""
    report = yield
    if report.failed and call.when == "call":
        for process in list(RUNNING.values()):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGUSR1)
        time.sleep(1.0)  # the dump is written by the server's own signal handler
        for log_path in RUNNING:
            lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"app log {log_path.name} (last {len(lines)} lines)", "\n".join(lines)))
    return report


@pytest.fixture(scope="session")
def app_url() -> Iterator[str]:
    """The dashboard with no pair loaded, started once per test session in its own process group."""
    yield from serve("app.log", {"ULENS_AUTOLOAD": "0", "ULENS_DEMO_QUICK": "0"})


@pytest.fixture(scope="session")
def quick_demo():
    """The quick demo's target and default unlearned run (npo), built in the cache home unless already there.

    Keys match what the app's `demo:NAME` resolves (the recipe, the embedded model's hash), so the app opens
    them without building anything.
    """
    from core.unlearn.demo import DEFAULT_UNLEARNED, RECIPES, TARGET, DemoExperiment

    experiment = DemoExperiment(RECIPES["quick"])
    experiment.build([TARGET, DEFAULT_UNLEARNED])
    assert experiment.is_built(TARGET) and experiment.is_built(DEFAULT_UNLEARNED)
    return experiment


@pytest.fixture(scope="session")
def demo_pair(quick_demo):
    """demo:target vs demo:unlearned of the quick demo, loaded in the test process as the app loads them."""
    from core.models.pair import ModelPair
    from core.models.spec import DEFAULT_BASE, DEFAULT_UNLEARNED, ModelSpec

    template = ModelSpec("demo:x", **DEMO_TEMPLATE_OPTIONS)
    names = [spec.removeprefix("demo:") for spec in (DEFAULT_BASE, DEFAULT_UNLEARNED)]
    return ModelPair.load(*(quick_demo.spec(name, template, build=False) for name in names))


@pytest.fixture(scope="session")
def demo_app_url(quick_demo) -> Iterator[str]:
    """The dashboard on the quick demo; each new browser session loads the default pair by itself."""
    yield from serve("demo-app.log", {"ULENS_AUTOLOAD": "1", "ULENS_DEMO_QUICK": "1"})


@pytest.fixture(scope="module")
def first_start_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make run` on a fresh machine: a fresh cache home, the quick demo experiment building in the background
    (`python -m core demo --background --quick`, as `make run` starts it) and the dashboard loading the default pair
    in every new session (ULENS_AUTOLOAD=1) while that build runs."""
    home = fresh_home(tmp_path_factory.mktemp("first-start"))
    env = {"ULENS_HOME": str(home), "ULENS_DEMO_QUICK": "1", "ULENS_AUTOLOAD": "1"}
    builder = start_background_demo(env)
    try:
        yield from serve("first-start-app.log", env)
    finally:
        stop_background_demo(builder)


@pytest.fixture
def shot_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT
