"""`python -m dashboard.serve run dashboard/app.py [flags]`: Streamlit's own command line (`python -m streamlit …`),
with the pages' heavy imports (torch, transformers, the core packages the pages draw with) done before the server
starts listening, so the first browser session draws its page at once instead of importing them first.

`make run` starts the dashboard this way. A plain `streamlit run dashboard/app.py` still works the same; only its
first session waits for those imports (a few seconds on a 2-core machine: docs/PERFORMANCE.md, The first minute).
"""

from __future__ import annotations

import ast
import importlib
import sys
import time
from pathlib import Path

from dashboard import diagnostics

ROOT = Path(__file__).resolve().parents[1]

DASHBOARD = Path(__file__).resolve().parent
THIRD_PARTY = ("plotly.graph_objects", "pandas")  # the figures and tables every page draws with


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


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    seconds = warm_imports()
    diagnostics.install()  # kill -USR1 / -USR2: where a hung server waits (the main thread's signal handler)
    print(f"Unlearning Lens: imports ready in {seconds:.1f} s; starting the server", file=sys.stderr, flush=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", *(sys.argv[1:] if argv is None else argv)]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
