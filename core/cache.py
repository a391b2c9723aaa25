"""The cache home (models, demo runs, evaluations) and atomic writes into it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

COMPLETE_MARKER = ".complete.json"


def cache_home() -> Path:
    """`$ULENS_HOME`, else `~/.cache/unlearning-lens`; created on first use."""
    home = Path(os.environ.get("ULENS_HOME") or Path.home() / ".cache" / "unlearning-lens")
    home.mkdir(parents=True, exist_ok=True)
    return home


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def is_complete(directory: Path) -> bool:
    """True when `directory` was finished by `atomic_directory` (a half-built one never is)."""
    return (directory / COMPLETE_MARKER).is_file()


def read_completion(directory: Path) -> dict[str, Any]:
    return json.loads((directory / COMPLETE_MARKER).read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_directory(target: Path, metadata: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a scratch folder; on success it replaces `target` whole and is marked complete.

    An interrupted build leaves only a scratch folder that is removed, so a later run redoes the work
    instead of trusting half of it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building."))
    try:
        yield scratch
        atomic_write_json(scratch / COMPLETE_MARKER, metadata or {})
        os.chmod(scratch, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def content_hash(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (inputs of a cached computation)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
