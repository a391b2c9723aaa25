"""`python -m dashboard.serve run dashboard/app.py [flags]`: Streamlit's own command line (`python -m streamlit …`),
with the pages' heavy imports (torch, transformers, the core packages the pages draw with) done before the server
starts listening, so the first browser session draws its page at once instead of importing them first (with two
other one-off costs moved before it, and the collector's pass after every script run made short: `prepare`).

`make run` starts the dashboard this way. A plain `streamlit run dashboard/app.py` still works the same; only its
first session waits for those imports (a few seconds on a 2-core machine: docs/PERFORMANCE.md, The first minute).
"""

from __future__ import annotations

import ast
import gc
import importlib
import inspect
import sys
import time
from pathlib import Path

from dashboard import diagnostics

ROOT = Path(__file__).resolve().parents[1]

DASHBOARD = Path(__file__).resolve().parent
THIRD_PARTY = ("plotly.graph_objects", "pandas")  # the figures and tables every page draws with
SERVER_MODULES = (  # what `streamlit run` imports before it listens (their files are read by prepare's inspect.stack)
    "streamlit.web.cli",
    "streamlit.web.bootstrap",
    "streamlit.web.server.starlette.starlette_server",
    "streamlit.web.server.starlette.starlette_app",
)


def page_imports(folder: Path = DASHBOARD) -> tuple[str, ...]:
    """What a page imports before it can draw: every `core.…` module the dashboard's files import (read from their
    source, not run: the dashboard's own modules need Streamlit's runtime), which brings torch and transformers
    (what the core modules import lazily, such as peft, captum, ray or lm-eval, stays lazy), plus plotly and pandas.
    Streamlit's pages then find them in sys.modules."""
    found: set[str] = set()
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return (*sorted(name for name in found if name == "core" or name.startswith("core.")), *THIRD_PARTY)


def warm_imports(modules: tuple[str, ...] | None = None) -> float:
    """Import `modules` (default: page_imports()); the seconds it took."""
    began = time.perf_counter()
    for name in page_imports() if modules is None else modules:
        importlib.import_module(name)
    return time.perf_counter() - began


def prepare() -> float:
    """Everything done before the server listens; the seconds it took. Each step takes a fixed cost off the first
    page a browser opens, or off every script run (docs/PERFORMANCE.md, The first minute):

    - warm_imports(): the pages' heavy imports.
    - Streamlit's server modules, then `inspect.stack()` once. The first element any session draws makes Streamlit
      call it (to tell a Python prompt from `streamlit run`), and its first call reads the real path of every loaded
      module's file: 0.08 s with torch and transformers loaded, which the very first page waited for.
    - gc.collect(), then gc.freeze(): the objects left by the imports (about 340,000) are kept out of the cyclic
      collector's passes from then on; they live as long as the process anyway. Streamlit collects every generation
      after each script run (its runner.postScriptGC), which took 0.15 s with them (0.26 s with a pair loaded) and
      holds the GIL while the run's last messages wait to be sent. A pair loaded later is not frozen: its cycles are
      still collected when another pair replaces it."""
    began = time.perf_counter()
    warm_imports()
    warm_imports(SERVER_MODULES)
    inspect.stack()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    seconds = prepare()
    diagnostics.install()  # kill -USR1 / -USR2: where a hung server waits (the main thread's signal handler)
    print(f"Unlearning Lens: imports ready in {seconds:.1f} s; starting the server", file=sys.stderr, flush=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", *(sys.argv[1:] if argv is None else argv)]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
