"""dashboard/serve.py, the launcher `make run` uses: the pages' heavy imports first, then Streamlit's own command line
with the arguments as given (the browser tests start every app through it: tests/e2e/appserver.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import streamlit

from dashboard import serve

ROOT = Path(__file__).resolve().parents[3]


def test_the_warm_modules_are_every_core_module_the_dashboard_imports():
    names = serve.page_imports()
    for expected in ("core.analyses.probe", "core.models.pair", "core.present.report.export", "plotly.graph_objects"):
        assert expected in names  # Probe's scoring, the pair, the export buttons' report package (rouge, nltk, scipy)
    assert not any(name.startswith(("dashboard", "streamlit")) for name in names)  # those need Streamlit's runtime
    assert serve.warm_imports() >= 0.0 and all(name in sys.modules for name in names)


def test_the_launcher_hands_its_arguments_to_streamlit_s_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "dashboard.serve", "version"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"Streamlit, version {streamlit.__version__}" in done.stdout
    assert "imports ready in" in done.stderr  # they ran before Streamlit's command did


def test_prepare_leaves_the_imports_out_of_every_later_collection_pass():
    """Streamlit runs gc.collect(2) after every script run; after prepare() that pass no longer walks the hundreds of
    thousands of objects the imports made (run in a child process: freezing is for the rest of a process's life)."""
    code = (
        "import gc, sys\n"
        "from dashboard import serve\n"
        "serve.prepare()\n"
        "frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())\n"
        "print(frozen, tracked, all(name in sys.modules for name in serve.SERVER_MODULES))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    frozen, tracked, server_modules = done.stdout.split()
    assert int(frozen) > 100_000  # torch, transformers, plotly, pandas and the core packages
    assert int(tracked) < int(frozen) // 20  # what a pass still walks: only what came after
    assert server_modules == "True"


def test_streamlit_serves_on_uvloop_where_the_requirements_install_it():
    """requirements.txt installs uvloop off Windows, and Streamlit's server then runs its event loop on it (half the
    time to serve the frontend's files to a new browser: docs/PERFORMANCE.md). A Streamlit upgrade that stopped
    choosing it would show here."""
    from streamlit.web import bootstrap

    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirement = next(line for line in lines if line.startswith("uvloop"))
    assert 'sys_platform != "win32"' in requirement
    if sys.platform != "win32":
        import uvloop

        assert bootstrap._get_uvloop_loop_factory() is uvloop.new_event_loop
