"""Every benchmark script in bench/ still imports against today's core (the benches are run by hand, not by the
suite, so a renamed name would otherwise surface only when someone measures), and its --help parses."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
BENCH_SIBLINGS = ("common", "appserver", "streamlit_ui")  # modules the scripts import by their bare names
SCRIPTS = sorted(path for path in BENCH.glob("*.py") if path.name != "common.py")


@pytest.mark.parametrize("path", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_bench_script_imports_and_shows_its_help(path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "path", [str(BENCH), *sys.path])  # as `python bench/x.py` runs it: bench/ first
    for name in BENCH_SIBLINGS:  # their `from common import …`, not another `common`; put back afterwards
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the imports, not main(): every script guards it with __name__
    assert callable(module.main), f"{path.name} has no main()"
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 0 and "usage" in out.getvalue().lower()
