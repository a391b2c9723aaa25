"""The docs stay true to the tree: every test file and test they cite exists, every core/ file path exists, and every
dotted `core.…` name they mention can be imported (modules moved or renamed must take their docs along)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_REF = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+)(…)?)?")  # `name…` cites every test starting with name
FILE_REF = re.compile(r"(?<![\w/])((?:core|dashboard|bench)/[\w/]+\.py)\b")
DOTTED_REF = re.compile(r"(?<![\w/.])(core(?:\.\w+)+)")


def mentions(pattern: re.Pattern[str]) -> list[tuple[str, re.Match[str]]]:
    return [(doc.name, match) for doc in DOCS for match in pattern.finditer(doc.read_text(encoding="utf-8"))]


def resolves(dotted: str) -> bool:
    """Whether `dotted` is a module, or an attribute path inside the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            return False
        return True
    return False


def test_cited_tests_exist() -> None:
    missing = []
    for doc, match in mentions(TEST_REF):
        path, test = ROOT / match.group(1), match.group(2)
        if not path.is_file():
            missing.append(f"{doc}: {match.group(0)} (no such file)")
        elif test and not re.search(rf"^def {test}" + ("" if match.group(3) else r"\b"), path.read_text("utf-8"), re.M):
            missing.append(f"{doc}: {match.group(0)} (no such test)")
    assert len(mentions(TEST_REF)) > 10  # the docs do cite tests: the pattern works
    assert not missing, "\n".join(missing)


def test_cited_source_files_exist() -> None:
    missing = [f"{doc}: {match.group(1)}" for doc, match in mentions(FILE_REF) if not (ROOT / match.group(1)).is_file()]
    assert not missing, "\n".join(missing)


def test_cited_core_names_resolve() -> None:
    names = sorted({match.group(1).rstrip(".") for _, match in mentions(DOTTED_REF)})
    assert len(names) > 10
    unresolved = [name for name in names if not resolves(name)]
    assert not unresolved, "names the docs mention that do not exist: " + ", ".join(unresolved)
