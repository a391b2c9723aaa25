"""core.data.uploads: uploads kept in a private folder of the cache home, checked by content, old ones cleaned up."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from core.common.errors import UserError
from core.data import uploads
from core.data.uploads import clean_uploads, store_files, upload_root

DAY = 24 * 3600
FILES = [("TOFU_EVAL.json", b'{"forget": 1}'), ("TOFU_SUMMARY.json", b'{"model_utility": 0.5}')]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ULENS_UPLOADS", raising=False)
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_uploads_go_to_a_private_folder_in_the_cache_home(home: Path) -> None:
    folder = store_files(FILES, "run")
    assert folder.parent.parent == home / "uploads"
    assert mode(home / "uploads") == 0o700
    assert (folder / "TOFU_EVAL.json").read_bytes() == b'{"forget": 1}'


def test_an_uploads_folder_open_to_others_is_made_private(home: Path) -> None:
    (home / "uploads").mkdir(parents=True)
    os.chmod(home / "uploads", 0o777)
    assert upload_root() == home / "uploads" and mode(home / "uploads") == 0o700


def test_the_override_is_private_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULENS_UPLOADS", str(tmp_path / "mine"))
    assert store_files(FILES).parent == tmp_path / "mine" and mode(tmp_path / "mine") == 0o700


def test_an_uploads_folder_of_another_user_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upload_root()
    monkeypatch.setattr(os, "getuid", lambda: os.stat(home).st_uid + 1)
    with pytest.raises(UserError, match="belongs to another user"):
        upload_root()


def test_a_changed_file_of_the_same_size_is_rewritten(home: Path) -> None:
    folder = store_files(FILES)
    (folder / "TOFU_EVAL.json").write_bytes(b'{"forget": 9}')  # same length, other content
    assert store_files(FILES) == folder
    assert (folder / "TOFU_EVAL.json").read_bytes() == b'{"forget": 1}'


def test_a_reused_upload_keeps_its_files_and_their_times(home: Path) -> None:
    """The dashboard's caches are keyed on the files' modification times: a second identical upload keeps them."""
    folder = store_files(FILES)
    for name, _ in FILES:
        os.utime(folder / name, ns=(1_000_000_000, 1_000_000_000))
    assert store_files(list(reversed(FILES))) == folder
    assert [(folder / name).stat().st_mtime_ns for name, _ in FILES] == [1_000_000_000] * 2


def test_upload_folders_unused_for_a_week_are_removed(home: Path) -> None:
    root = upload_root()
    old = root / "0123456789abcdef"
    (old / "run").mkdir(parents=True)
    (old / "run" / "TOFU_EVAL.json").write_text("{}")
    age(old, 8)
    recent = root / "fedcba9876543210"
    recent.mkdir()
    age(recent, 2)
    other = root / "notes"  # not an upload folder: never touched
    other.mkdir()
    age(other, 30)
    folder = store_files(FILES)
    assert sorted(p.name for p in root.iterdir()) == sorted([folder.name, recent.name, other.name])


def test_a_reused_upload_counts_as_used(home: Path) -> None:
    folder = store_files(FILES)
    age(folder, 30)
    store_files(FILES)
    assert clean_uploads(upload_root()) == [] and folder.is_dir()
    age(folder, 30)
    assert clean_uploads(upload_root()) == [folder] and not folder.exists()


def test_clean_up_runs_at_most_once_an_hour(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(uploads, "clean_uploads", lambda root, keep=None: calls.append(root) or [])
    store_files(FILES)
    store_files([("other.json", b"{}")])
    assert calls == [home / "uploads"]
