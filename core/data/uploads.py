"""Files uploaded through the dashboard, kept on disk so that the file-based readers (ingest, data) can open them.

Each upload lands in a folder named by the hash of its content, so re-running a page with the same upload reuses
the same files (and their modification times, which key the dashboard's caches) instead of writing new copies.
The folders live in the user's own cache home, readable by nobody else (uploads may be private data), and
folders not used for a week are deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from core.common.cache import atomic_write_bytes, cache_home, file_hash
from core.common.errors import UserError

log = logging.getLogger(__name__)

UPLOADS_ENV = "ULENS_UPLOADS"
MAX_AGE_S = 7 * 24 * 3600  # an upload folder unused this long is deleted
CLEAN_EVERY_S = 3600  # at most one clean-up per root per hour and process (a store then costs one stat per folder)
_SAFE_NAME = re.compile(r"^[\w][\w.\- ]{0,199}$")
_UPLOAD_FOLDER = re.compile(r"^[0-9a-f]{16}$")  # what store_files creates; nothing else in the root is touched
_last_clean: dict[Path, float] = {}


def upload_root() -> Path:
    """`$ULENS_UPLOADS`, else `cache_home()/uploads`; created, or made, readable by this user only."""
    root = Path(os.environ.get(UPLOADS_ENV) or cache_home() / "uploads")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.getuid():
        raise UserError(f"the uploads folder {root} belongs to another user; set {UPLOADS_ENV} to a folder of yours")
    if info.st_mode & 0o077:
        log.warning("the uploads folder %s was open to other users; making it private (mode 700)", root)
        os.chmod(root, 0o700)
    return root


def safe_name(name: str, what: str = "file name") -> str:
    """`name` when it is a plain name (no folders, no leading dot), else a UserError saying why not."""
    if not _SAFE_NAME.match(name) or name.strip() != name:
        raise UserError(f"{what} {name!r} is not allowed: use letters, digits, '_', '-', '.' and no folders")
    return name


def store_files(files: Sequence[tuple[str, bytes]], subfolder: str = "") -> Path:
    """Write (name, content) pairs into one content-addressed folder (plus `subfolder`) and return that folder.

    A file already there is kept (with its modification time) only when its content hash matches: a copy that
    was cut short or changed since is rewritten."""
    if not files:
        raise UserError("no files were uploaded")
    names = [safe_name(name) for name, _ in files]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"several uploaded files are named {', '.join(duplicates)}; upload one run at a time")
    digest = hashlib.sha256()
    for name, content in sorted(files):
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(content).digest())
    root = upload_root()
    top = root / digest.hexdigest()[:16]
    folder = top / safe_name(subfolder, "folder name") if subfolder else top
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.utime(top)  # marks it used (first, so a clean-up running now in another process spares it)
    for name, content in files:
        target = folder / name
        if not (target.is_file() and file_hash(target) == hashlib.sha256(content).hexdigest()):
            atomic_write_bytes(target, content)
    if time.monotonic() - _last_clean.get(root, -CLEAN_EVERY_S) >= CLEAN_EVERY_S:
        _last_clean[root] = time.monotonic()
        clean_uploads(root, keep=top)
    return folder


def clean_uploads(root: Path, max_age_s: float = MAX_AGE_S, keep: Path | None = None) -> list[Path]:
    """Delete the upload folders in `root` not used for `max_age_s` seconds (other entries are left alone)."""
    cutoff = time.time() - max_age_s
    removed = []
    for child in root.iterdir():
        if not _UPLOAD_FOLDER.match(child.name) or child == keep or child.is_symlink() or not child.is_dir():
            continue
        try:
            unused = child.stat().st_mtime < cutoff
        except FileNotFoundError:
            continue  # another process removed it
        if unused:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    if removed:
        log.info("removed %d upload folder(s) unused for %.0f days from %s", len(removed), max_age_s / 86400, root)
    return removed
