"""The cache home (models, demo runs, evaluations) and atomic writes into it."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete.json"
_SWAP_ATTEMPTS = 50


def cache_home() -> Path:
    """`$ULENS_HOME`, else `~/.cache/unlearning-lens`; created on first use."""
    home = Path(os.environ.get("ULENS_HOME") or Path.home() / ".cache" / "unlearning-lens")
    home.mkdir(parents=True, exist_ok=True)
    return home


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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
    instead of trusting half of it. Concurrent builders of one target all succeed (the last one's folder
    stays), and a reader of `target` sees either the old complete folder or the new one, never a mix of
    one with files missing.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building."))
    try:
        yield scratch
        atomic_write_json(scratch / COMPLETE_MARKER, metadata or {})
        os.chmod(scratch, 0o755)
        _swap_in(scratch, target)
    finally:
        if scratch.exists():
            _discard(scratch)


def remove_stale_scratch(target: Path) -> None:
    """Delete the scratch and aside folders that killed builds of `target` left beside it (a model build leaves
    hundreds of MB). Only for a caller holding the lock of `target`: otherwise they may be another build's."""
    for pattern in (f".{target.name}.building.*", f".{target.name}.old.*"):
        for stale in target.parent.glob(pattern):
            log.info("removing %s, left by an interrupted build", stale)
            _discard(stale)


def _swap_in(scratch: Path, target: Path) -> None:
    """Put `scratch` at `target`; an old `target` ends up in `scratch` or an aside folder, and is deleted."""
    for _ in range(_SWAP_ATTEMPTS):
        try:
            os.rename(scratch, target)  # succeeds when there is no target (or an empty one)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        try:
            if _exchange(scratch, target):  # one step: `target` is never missing, `scratch` now holds the old one
                return
        except FileNotFoundError:
            continue  # another writer moved the old folder away meanwhile: try the plain rename again
        if _replace_via_aside(scratch, target):
            return
    raise OSError(errno.EBUSY, f"could not replace {target}: other writers kept replacing it", str(target))


def _replace_via_aside(scratch: Path, target: Path) -> bool:
    """Rename the old folder aside, the new one in, then delete the old one; False when the old one had gone.

    Between the two renames `target` is missing (a reader sees no folder, never half of one). Losing a race to
    another writer is no error: its complete folder stays. Any other failure puts the old folder back.
    """
    aside = target.parent / f".{target.name}.old.{uuid.uuid4().hex}"
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        return False
    try:
        os.rename(scratch, target)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            try:
                os.rename(aside, target)
            except OSError:
                log.error("could not put %s back after a failed replace; the old copy is in %s", target, aside)
            raise
    _discard(aside)
    return True


def _discard(folder: Path) -> None:
    """Delete a folder, its completion marker first: whoever still holds it open stops trusting it at once."""
    with contextlib.suppress(OSError):
        (folder / COMPLETE_MARKER).unlink()
    shutil.rmtree(folder, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or file system
    cannot, so the caller falls back to renaming aside. Python's os module has no binding for it."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's renameat2, or None (not Linux, or a C library without it)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange_supported(folder: Path) -> bool:
    """Whether `_exchange` works in `folder` (tests skip what needs it elsewhere)."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        a.mkdir()
        b.mkdir()
        return _exchange(a, b)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) across processes; released on exit or process death."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
