"""The Report page through AppTest: the HTML it serves, its chart and table exports, and mistakes as messages.

The report built on the page is compared with core computed directly: ingest for the metric table and axes,
core.analyses.probe.score on the same pair for the probes; the download buttons serve the bytes the page built.
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import pandas as pd
import pytest
import streamlit.testing.v1.app_test as app_test
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from tiny_models import save_tiny_model_dir

from core.analyses.probe import ProbeRequest, score
from core.evaluation.ingest import ingest
from core.evaluation.results import default_axes, metric_options
from core.present.report.parts import frame_to_csv, metric_table, table_metrics
from dashboard.state import keys
from dashboard.state import pair as pair_state

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "dashboard" / "app.py"
FIXTURES = ROOT / "tests" / "fixtures" / "ingest"
GRADDIFF = FIXTURES / "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"
ORACLE = FIXTURES / "tofu_Llama-3.2-1B-Instruct_retain90"
INJECTION = "<script>window.__pwned = 1</script>"
TIMEOUT = 180


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


@pytest.fixture(autouse=True)
def isolated(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app), and what this module needs besides."""
    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", RecordingStorage)
    monkeypatch.setattr(app_test, "MediaFileManager", RecordingManager)
    RecordingStorage.files.clear()


@pytest.fixture(scope="module")
def tiny_pair_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return save_tiny_model_dir(root / "base", seed=0), save_tiny_model_dir(root / "unlearned", seed=1)


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


@pytest.mark.slow  # renders the chart's PNG in Chromium
def test_results_report_serves_its_html_and_exports(tmp_path: Path) -> None:
    at = open_report()
    assert [title.value for title in at.title] == ["Report"]
    widget(at.text_area, "Result folders, one per line").input(str(GRADDIFF))
    widget(at.text_input, "Oracle folder (optional)").input(str(ORACLE)).run()
    summary = ingest([GRADDIFF], oracle=ORACLE).summary
    axes = default_axes(metric_options(summary))
    assert (at.selectbox(key="report_x").value, at.selectbox(key="report_y").value) == axes
    widget(at.text_area, "Notes").input(f"Read this {INJECTION}")
    build(at)
    assert not errors(at)
    document = served(at, "Download report (HTML)").decode("utf-8")
    _, built, name = at.session_state[keys.REPORT_BUILT]
    assert document == built.decode("utf-8") and name == "unlearning-report.html"
    assert INJECTION not in document and html.escape(INJECTION) in document
    for key in ("notes", "tradeoffs", "metrics", "appendix"):
        assert f'id="section-{key}"' in document
    assert 'id="section-probes"' not in document
    # the table export serves the metric table computed from the same folders
    expected = metric_table(summary, table_metrics(summary, axes))
    assert served(at, "CSV").decode("utf-8") == frame_to_csv(expected)
    shown = pd.read_csv(io.BytesIO(served(at, "CSV")))
    assert shown["model"].tolist() == expected["model"].tolist()
    # the chart's image buttons render on click (deferred): run the PNG one as a click does
    images = {label: proto for label, proto in downloads(at).items() if label in ("PNG", "SVG", "PDF")}
    assert sorted(images) == ["PDF", "PNG", "SVG"] and all(proto.deferred_file_id for proto in images.values())
    url = RecordingManager.latest.execute_deferred(images["PNG"].deferred_file_id)
    png = RecordingStorage.files[Path(url).stem]
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024


def test_probes_on_a_loaded_pair_equal_core_scores(tiny_pair_dirs: tuple[Path, Path]) -> None:
    base, unlearned = tiny_pair_dirs
    at = open_report()
    widget(at.text_input, "Base model").input(str(base))
    widget(at.text_input, "Unlearned model").input(str(unlearned))
    widget(at.button, "Load pair").click().run()
    assert not at.exception and not errors(at)
    widget(at.text_area, "Probes, one per line: prompt|answer").input(f"the capital of {INJECTION}|paris\nfrance is")
    at.toggle(key="report_lens").set_value(True)
    at.toggle(key="report_chat").set_value(False)
    build(at)
    assert not errors(at)
    report = at.session_state[keys.REPORT_BUILT][0]
    pair = pair_state.load_pair(*at.session_state[keys.PAIR_KEY])
    expected = score(pair, [ProbeRequest(f"the capital of {INJECTION}", "paris"), ProbeRequest("france is")])
    assert [[t.delta for t in p.tokens] for p in report.probes] == [[t.delta for t in p.tokens] for p in expected]
    assert [lens.answer for lens in report.lenses] == ["paris"]
    document = served(at, "Download report (HTML)").decode("utf-8")
    assert INJECTION not in document
    for key in ("pair", "probes", "layers"):
        assert f'id="section-{key}"' in document


@pytest.mark.parametrize(
    ("folders", "probes", "message"),
    [
        ("", "", "nothing to report"),
        ("", "Who is Jane?|a writer", "need a model pair"),
        ("", " |only an answer", "no prompt"),
        ("/no/such/folder", "", "no such file or folder"),
    ],
)
def test_bad_inputs_are_messages(folders: str, probes: str, message: str) -> None:
    at = open_report()
    widget(at.text_area, "Result folders, one per line").input(folders)
    widget(at.text_area, "Probes, one per line: prompt|answer").input(probes)
    build(at)
    assert any(message in error for error in errors(at)), errors(at)
    assert keys.REPORT_BUILT not in at.session_state


def test_probes_prefilled_from_the_probe_page() -> None:
    at = open_report(probe_result=(None, {"prompt": "Who wrote\nthe book?", "answer": "Jane"}))
    assert widget(at.text_area, "Probes, one per line: prompt|answer").value == "Who wrote the book?|Jane"
