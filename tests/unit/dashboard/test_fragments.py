"""No fragment of the dashboard draws another fragment. Streamlit's frontend fails on nested fragments: a rerun of
the inner one that arrives while the outer one reruns stops the page with "'setIn' cannot be called on an
ElementNode" (docs/ARCHITECTURE.md; upstream reports the same for a timed inner fragment, streamlit#15084). Read
from the source: every function decorated with `fragment` / `fragment(...)` (dashboard/boundary.py), and every
function it can reach through calls by name anywhere in the dashboard."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "dashboard"


def is_fragment(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "fragment") or (
        isinstance(target, ast.Attribute) and target.attr == "fragment"
    )


def functions(folder: Path = DASHBOARD) -> dict[str, list[ast.FunctionDef]]:
    found: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                found.setdefault(node.name, []).append(node)
    return found


def calls(function: ast.FunctionDef) -> set[str]:
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                names.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)  # module.function(...) and method calls alike (a superset: safe here)
    return names


def reachable(start: ast.FunctionDef, by_name: dict[str, list[ast.FunctionDef]]) -> set[str]:
    seen: set[str] = set()
    todo = list(calls(start))
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        for function in by_name[name]:
            todo.extend(calls(function))
    return seen


def test_the_dashboard_has_fragments_and_none_draws_another():
    by_name = functions()
    fragments = {name for name, defs in by_name.items() for d in defs if any(map(is_fragment, d.decorator_list))}
    assert {"score_panel", "live_progress", "demo_progress_live"} <= fragments  # the reader finds them
    nested = {
        (function.name, inner)
        for name in fragments
        for function in by_name[name]
        if any(map(is_fragment, function.decorator_list))
        for inner in reachable(function, by_name) & fragments
        if inner != name
    }
    assert not nested, f"fragments drawn inside fragments: {sorted(nested)}"


def test_the_reader_sees_a_nested_fragment(tmp_path):
    """The check itself: a fragment calling a helper that draws a fragment is found."""
    source = """
@fragment
def outer():
    helper()

def helper():
    inner()

@fragment(run_every=1)
def inner():
    pass
"""
    (tmp_path / "page.py").write_text(source)
    by_name = functions(tmp_path)
    assert reachable(by_name["outer"][0], by_name) == {"helper", "inner"}
