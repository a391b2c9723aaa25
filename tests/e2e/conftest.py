"""End-to-end fixtures: the real app on a free port, driven by Debian's Chromium through Playwright.

Two apps: `app_url` starts with no pair loaded (ULENS_AUTOLOAD=0; tests load their own), `demo_app_url` runs the
quick demo experiment (ULENS_DEMO_QUICK=1) and loads the default pair demo:target vs demo:unlearned in every new
session. The quick demo is built in the cache home before that app starts (once; later runs reuse the cache), and
`demo_pair` is the same pair loaded in the test process, to compare what the browser shows with core.analyses.probe.
"""

from __future__ import annotations

import os
import re
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

from dashboard import diagnostics

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


PAGE_ERRORS: dict[Any, list[str]] = {}  # page -> its uncaught script errors and console errors, for a failure's report


@pytest.fixture
def page(page: Any) -> Iterator[Any]:
    """The test's page, its script errors recorded (Streamlit's frontend failing shows up there first)."""
    errors: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text[:300]}")

    page.on("pageerror", lambda error: errors.append(f"uncaught: {str(error)[:300]}"))
    page.on("console", console)
    PAGE_ERRORS[page] = errors
    yield page
    PAGE_ERRORS.pop(page, None)


RUNNING: dict[Path, subprocess.Popen] = {}  # the apps up now, by log file: a failing test reports what they were doing
LOG_TAIL_LINES = 60


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


def browser_states(item: pytest.Item) -> list[str]:
    """Each open page of the test's browser: its URL and the script state its frontend shows."""
    pages = [item.funcargs[name] for name in ("page",) if name in item.funcargs]
    browser = item.funcargs.get("browser")
    for context in browser.contexts if browser is not None else []:
        pages.extend(page for page in context.pages if page not in pages)
    lines = []
    for page in pages:
        try:
            state = page.locator("[data-testid='stApp']").first.get_attribute("data-test-script-state", timeout=2000)
            status = page.get_by_test_id("stStatusWidget").all_inner_texts()
            lines.append(f"browser page {page.url}: script state {state!r}, status widget {status!r}")
        except Exception as exc:  # a closed page, a crashed frontend: say so and go on
            lines.append(f"browser page {page.url}: state unreadable ({type(exc).__name__})")
        lines.extend(f"  {error}" for error in PAGE_ERRORS.get(page, [])[-6:])  # its last script errors
    return lines


def cpu_ticks() -> dict[int, int]:
    """Each process's user + system CPU ticks so far (Linux /proc; empty elsewhere)."""
    ticks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            ticks[int(stat.parent.name)] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return ticks


def busiest_processes(count: int = 6, seconds: float = 1.0) -> list[str]:
    """The processes that used the most CPU over the next `seconds` (a page whose renderer spins shows up here as
    a busy chromium; a hung server as an idle one)."""
    before = cpu_ticks()
    time.sleep(seconds)
    after = cpu_ticks()
    used = sorted(((after[pid] - before.get(pid, 0), pid) for pid in after), reverse=True)[:count]
    hertz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    lines = []
    for ticks, pid in used:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            command = "?"
        lines.append(f"cpu {100 * ticks / hertz / seconds:5.0f}%  pid {pid}  {command[:140]}")
    return lines


def browser_processes() -> list[str]:
    """Each Chromium process: its type and its kernel state (R running, S sleeping, D waiting on the disk, Z dead)
    and, when sleeping, the kernel function it waits in."""
    lines = []
    for cmdline in sorted(Path("/proc").glob("[0-9]*/cmdline")):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")  # children rewrite it
            if "chrom" not in command.split(" ", 1)[0]:
                continue
            kind = re.search(r"--type=(\S+)", command)
            sub = re.search(r"--utility-sub-type=(\S+)", command)
            kind = (kind.group(1) if kind else "browser") + (f" ({sub.group(1)})" if sub else "")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = (cmdline.parent / "wchan").read_text().strip() or "-"
        except (OSError, IndexError):
            continue
        lines.append(f"chromium pid {cmdline.parent.name} {kind}: state {state}, waits in {wchan}")
    return lines


def log_lines(log_path: Path) -> list[str]:
    return log_path.read_text(errors="replace").splitlines()


def state_report(lines: list[str]) -> list[str]:
    """The last session-state report (dashboard/diagnostics.py) in an app's log lines."""
    if diagnostics.END not in lines:
        return ["no state report (a server not started by dashboard.serve, or its main thread did not answer)"]
    end = len(lines) - 1 - lines[::-1].index(diagnostics.END)
    begin = max(i for i in range(end) if lines[i] == diagnostics.BEGIN)
    return lines[begin + 1 : end]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed browser test says, before its traceback, what the browser showed and what each running app was doing
    (dashboard/diagnostics.py: SIGUSR2 for the sessions' states and the app's own threads, SIGUSR1 for every stack);
    the tail of each app's log follows the traceback. So a page that hung on a CI machine says where it waited."""
    report = yield
    if report.failed and call.when == "call":
        lines = [*browser_states(item), *busiest_processes(), *browser_processes()]
        before = {log_path: len(log_lines(log_path)) for log_path in RUNNING}  # the log as the test left it
        for sig in (signal.SIGUSR2, signal.SIGUSR1):
            for process in list(RUNNING.values()):
                if process.poll() is None:
                    os.kill(process.pid, sig)
            time.sleep(1.0)  # written by the server's own signal handlers
        for log_path, count in before.items():
            written = log_lines(log_path)
            lines += [f"app {log_path.name}:", *state_report(written[count:])]
            tail = written[:count][-LOG_TAIL_LINES:]
            report.sections.append((f"app log {log_path.name} (last {len(tail)} lines)", "\n".join(tail)))
        report.longrepr = "\n".join([*lines, "", str(report.longrepr)])
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
