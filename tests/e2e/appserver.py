"""Start and stop the dashboard as a real server on a free port, and wait for Streamlit in a browser page.

Shared by the e2e fixtures (tests/e2e/conftest.py) and the browser benchmark (bench/ui.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"  # the app's script has finished its run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SAFE_FLAGS = ["--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
EXPOSURE = ("STREAMLIT_SERVER_ADDRESS", "STREAMLIT_SERVER_ALLOWED_HOSTS")  # the operator's way to expose the server


def start_app(
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    console_script: bool = False,
    bare: bool = False,
) -> subprocess.Popen:
    """`streamlit run dashboard/app.py` headless on 127.0.0.1:`port`, in its own process group (see stop_app);
    from `cwd`, through `python -m dashboard.serve` (as `make run` starts it: Streamlit's command line after the
    pages' heavy imports) or, with `console_script`, the venv's plain `streamlit` command. `bare`:
    no command-line flags at all and no exposure variables, only the project's .streamlit/config.toml (the port
    from Streamlit's own environment variable, which is not a flag)."""
    serve = [sys.executable, "-m", "dashboard.serve"]
    launcher = [str(Path(sys.executable).parent / "streamlit")] if console_script else serve
    flags = [] if bare else [*SAFE_FLAGS, "--server.port", str(port), "--server.fileWatcherType", "none"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if not console_script:  # `-m dashboard.serve` from any cwd
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    if bare:
        environment["STREAMLIT_SERVER_PORT"] = str(port)
        for name in EXPOSURE:
            environment.pop(name, None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps it; closed when the process group ends
    try:
        return subprocess.Popen(
            [*launcher, "run", str(ROOT / "dashboard" / "app.py"), *flags],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
        )
    finally:
        log.close()


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the app did not become healthy within {timeout} s")


def stop_app(process: subprocess.Popen) -> None:
    """End the app's whole process group (the server and anything it started)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def fresh_home(root: Path) -> Path:
    """A cache home with nothing built under `root`: only the embedded model's safetensors copy (linked from the
    usual cache home, so nothing is downloaded), no demo stage, no evaluation, no result."""
    from core.models.embedded import ensure_embedded_model

    model = ensure_embedded_model()
    home = root / "home"
    (home / model.parent.name).mkdir(parents=True)
    (home / model.parent.name / model.name).symlink_to(model, target_is_directory=True)
    return home


def start_background_demo(env: dict[str, str]) -> int | None:
    """`python -m core demo --background --quick` as `make run` starts it (in the cache home `env` names); the
    builder's process id (it leads its own process group), or None when it did not start one."""
    command = [sys.executable, "-m", "core", "demo", "--background", "--quick"]
    started = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True, text=True)
    match = re.search(r"process (\d+)", started.stdout)
    return int(match[1]) if match else None


def stop_background_demo(pid: int | None) -> None:
    """End the background build started by start_background_demo (its whole process group), by its own id."""
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
