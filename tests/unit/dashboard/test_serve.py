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
