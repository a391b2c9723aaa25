"""The project reads nothing outside its own tree: a user's clone has no sibling folders beside it."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("core", "dashboard", "bench", "assets", "tests")
PLAIN_FILES = ("Makefile", ".ci/run", "pyproject.toml", "requirements.txt", "requirements-dev.txt")
SIBLING = re.compile(r"(?<![\w.])\.\./|\bshared/(data|reference|hooks)\b")


def tracked(*patterns: str) -> list[Path]:
    """The repository's files (tracked or new, not ignored) matching `patterns`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *patterns],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def file_anchored_paths(tree: ast.AST, source: Path) -> list[tuple[int, Path]]:
    """(line, folder) for every `Path(__file__)…parents[n]` / `….parent.parent` expression, resolved statically."""
    found, inside = [], set()
    for node in ast.walk(tree):  # outer expressions come first: their inner chains are skipped
        if id(node) in inside:
            continue
        up, inner = 0, node
        while True:
            inside.add(id(inner))
            if isinstance(inner, ast.Subscript) and isinstance(inner.value, ast.Attribute):
                if inner.value.attr != "parents" or not isinstance(inner.slice, ast.Constant):
                    break
                up, inner = up + inner.slice.value + 1, inner.value.value
            elif isinstance(inner, ast.Attribute) and inner.attr == "parent":
                up, inner = up + 1, inner.value
            elif isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr == "resolve":
                inner = inner.func.value
            else:
                break
        is_file_path = (
            isinstance(inner, ast.Call)
            and getattr(inner.func, "id", None) == "Path"
            and any(isinstance(arg, ast.Name) and arg.id == "__file__" for arg in inner.args)
        )
        if up and is_file_path:
            target = source
            for _ in range(up):
                target = target.parent
            found.append((node.lineno, target))
    return sorted(found, key=lambda hit: hit[0])


def test_no_path_anchored_on_a_source_file_leaves_the_repository() -> None:
    sources = tracked(*(f"{folder}/*.py" for folder in CODE_DIRS))
    assert len(sources) > 50  # the scan really sees the code
    outside = []
    for source in sources:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for line, target in file_anchored_paths(tree, source):
            if not target.is_relative_to(ROOT):
                outside.append(f"{source.relative_to(ROOT)}:{line} -> {target}")
    assert not outside, "paths that leave the repository:\n" + "\n".join(outside)


def test_the_scan_catches_a_path_that_leaves() -> None:
    """The checker itself: parents[2] from tests/x.py leaves the tree, parents[1] does not."""
    probe = ROOT / "tests" / "x.py"
    leaves = ast.parse('A = Path(__file__).resolve().parents[2] / "sibling"\nB = Path(__file__).parent.parent')
    assert [target for _, target in file_anchored_paths(leaves, probe)] == [ROOT.parent, ROOT]


def test_no_code_names_a_sibling_folder() -> None:
    """No `../` path and no path into the sibling shared folder in code, build files or docs (test inputs that try path
    traversal on purpose are the exception, and only in tests)."""
    hits = []
    for path in tracked(*(f"{folder}/*.py" for folder in CODE_DIRS if folder != "tests"), *PLAIN_FILES, "*.md"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SIBLING.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    for path in tracked("tests/*.py"):
        text = path.read_text(encoding="utf-8")
        hits += [f"{path.relative_to(ROOT)}: {match.group(0)}" for match in re.finditer(r"\bshared/\w+", text)]
    assert not hits, "references outside the repository:\n" + "\n".join(hits)
