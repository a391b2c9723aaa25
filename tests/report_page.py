"""The dashboard's Report page through AppTest, with every download it serves recorded, for the report page tests of
every tier (tests/ is on sys.path: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit.testing.v1.app_test as app_test
from apptest_pages import APP, TIMEOUT
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from dashboard.state import keys

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ingest"
GRADDIFF = FIXTURES / "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"
ORACLE = FIXTURES / "tofu_Llama-3.2-1B-Instruct_retain90"
INJECTION = "<script>window.__pwned = 1</script>"


class RecordingStorage(MemoryMediaFileStorage):
    """AppTest's media storage, keeping every file's bytes by id so a test can read what a download serves."""

    files: dict[str, bytes] = {}  # noqa: RUF012 - shared on purpose: AppTest builds its own instance

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None) -> str:
        file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
        RecordingStorage.files[file_id] = self.get_file(file_id).content
        return file_id


class RecordingManager(MediaFileManager):
    """AppTest's media file manager, remembered so a test can run a deferred download as a click would."""

    latest: RecordingManager | None = None

    def __init__(self, storage: MemoryMediaFileStorage) -> None:
        super().__init__(storage)
        RecordingManager.latest = self


def record_media(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest's media storage and file manager swapped for the recording ones, emptied (an autouse fixture's job)."""
    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", RecordingStorage)
    monkeypatch.setattr(app_test, "MediaFileManager", RecordingManager)
    RecordingStorage.files.clear()


def open_report(**session: object) -> AppTest:
    """The app on the Report page, without loading the default pair; `session` seeds session state first."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    at.switch_page("views/report.py").run()
    assert not at.exception
    return at


def widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def errors(at: AppTest) -> list[str]:
    return [error.value for error in at.error]


def downloads(at: AppTest) -> dict[str, object]:
    return {button.proto.label: button.proto for button in at.get("download_button")}


def served(at: AppTest, label: str) -> bytes:
    """The bytes a (non-deferred) download button serves, from the media storage by the id in its URL."""
    return RecordingStorage.files[Path(downloads(at)[label].url).stem]


def build(at: AppTest) -> None:
    widget(at.button, "Build report").click().run()
    assert not at.exception
