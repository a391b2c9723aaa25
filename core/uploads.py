"""Files uploaded through the dashboard, kept on disk so that the file-based readers (ingest, data) can open them.

Each upload lands in a folder named by the hash of its content, so re-running a page with the same upload reuses
the same files (and their modification times, which key the dashboard's caches) instead of writing new copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from core.errors import UserError

_SAFE_NAME = re.compile(r"^[\w][\w.\- ]{0,199}$")


def upload_root() -> Path:
    """`$ULENS_UPLOADS`, else a folder in the system temp directory."""
    return Path(os.environ.get("ULENS_UPLOADS") or Path(tempfile.gettempdir()) / "unlearning-lens-uploads")


def safe_name(name: str, what: str = "file name") -> str:
    """`name` when it is a plain name (no folders, no leading dot), else a UserError saying why not."""
    if not _SAFE_NAME.match(name) or name.strip() != name:
        raise UserError(f"{what} {name!r} is not allowed: use letters, digits, '_', '-', '.' and no folders")
    return name


def store_files(files: Sequence[tuple[str, bytes]], subfolder: str = "") -> Path:
    """Write (name, content) pairs into one content-addressed folder (plus `subfolder`) and return that folder."""
    if not files:
        raise UserError("no files were uploaded")
    names = [safe_name(name) for name, _ in files]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"several uploaded files are named {', '.join(duplicates)}; upload one run at a time")
    digest = hashlib.sha256()
    for name, content in sorted(files):
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(content).digest())
    folder = upload_root() / digest.hexdigest()[:16]
    if subfolder:
        folder = folder / safe_name(subfolder, "folder name")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files:
        target = folder / name
        if not (target.is_file() and target.stat().st_size == len(content)):
            _atomic_write_bytes(target, content)
    return folder


def _atomic_write_bytes(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
