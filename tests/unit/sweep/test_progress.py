"""A sweep's progress without Ray: the ETA worked by hand, the progress file and its copy in the cache home, the
readers' refusals, and the Tradeoffs page drawing it (escaped)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from apptest_pages import open_page

from core.common.cache import cache_home
from core.sweep.progress import (
    SWEEPS_FOLDER,
    SweepProgress,
    TaskView,
    dashboard_mirror,
    format_seconds,
    read_progress,
    recent_sweeps,
    sweep_eta,
)
from core.sweep.store import TaskReporter, TaskStore
from dashboard.plain import shown


@pytest.fixture(autouse=True)
def home(fresh_app, tmp_path: Path) -> Path:
    return cache_home()


def test_eta_by_hand() -> None:
    now = 1000.0
    tasks = [
        TaskView("a", "ka", state="done", seconds=10.0),
        TaskView("b", "kb", state="running", fraction=0.5, started=now - 4.0),  # 4 s in, half done: 4 s left
        TaskView("c", "kc"),
        TaskView("d", "kd"),
    ]
    # slowest running remainder 4 s, then 2 queued tasks of the typical length (10 s done, 8 s projected for b: 9 s)
    # over the 1 worker running now: 4 + 2 · 9 = 22 s
    assert sweep_eta(tasks, now) == pytest.approx(22.0)
    assert sweep_eta([TaskView("x", "kx")], now) is None  # nothing to go by yet
    assert sweep_eta([TaskView("a", "ka", state="done", seconds=3.0)], now) == 0.0
    assert [format_seconds(s) for s in (None, 59.4, 61, 3725)] == ["?", "59s", "1m01s", "1h02m"]


def test_progress_file_follows_the_tasks_and_is_mirrored_for_the_dashboard(home: Path, tmp_path: Path) -> None:
    out = home / "evals" / "sweep"
    progress = SweepProgress("evaluate", out, [TaskView("m0", "k0"), TaskView("m1", "k1")], show=False)
    reporter = TaskReporter(TaskStore.beside(out), "k1", "m1")  # what a worker writes when its task starts
    reporter(0.25)
    progress.settle("k0", "done", seconds=2.0)
    data = read_progress(out / ".sweep" / "progress.json")
    assert data is not None and data["state"] == "running"
    assert {t["label"]: (t["state"], t["fraction"], t["attempt"]) for t in data["tasks"]} == {
        "m0": ("done", 1.0, 0), "m1": ("running", 0.25, 1)
    }  # fmt: skip
    mirror = dashboard_mirror(out)
    assert mirror is not None and mirror.parent == home / SWEEPS_FOLDER
    assert json.loads(mirror.read_text()) == data
    assert recent_sweeps() == [data]
    progress.close("finished")
    assert recent_sweeps()[0]["state"] == "finished"
    assert dashboard_mirror(tmp_path / "elsewhere") is None  # only sweeps writing into the cache home


def test_readers_skip_foreign_stale_and_broken_files(home: Path) -> None:
    folder = home / SWEEPS_FOLDER
    folder.mkdir(parents=True)
    (folder / "broken.json").write_text("{not json")
    (folder / "nested.json").write_text("[" * 100_000)
    (folder / "other.json").write_text(json.dumps({"format": "something/else", "tasks": []}))
    old = {"format": "unlearning-lens/sweep-progress/1", "tasks": [], "updated": time.time() - 7200}
    (folder / "old.json").write_text(json.dumps(old))
    assert recent_sweeps(within_s=3600) == []
    assert read_progress(folder / "missing.json") is None


def test_tradeoffs_page_shows_a_running_sweep_as_plain_text(home: Path) -> None:
    out = home / "evals" / "**bold** <b>sweep</b>"
    tasks = [TaskView("m0", "k0"), TaskView("<script>x</script>", "k1"), TaskView("m2", "k2")]
    progress = SweepProgress("evaluate", out, tasks, show=False)
    progress.settle("k0", "done", seconds=2.0)
    progress.settle("k1", "failed", error="could not load *it*")
    at = open_page("tradeoffs")
    bars = at.get("progress")
    assert [bar.value for bar in bars] == [66]  # 2 of 3 settled
    assert shown(bars[0].proto.text).startswith(f"evaluate sweep into {out}: 2/3 tasks, running")
    captions = [shown(caption.value) for caption in at.caption]
    assert "1 task(s) failed; the others' results are written. Fix and rerun." in captions
    table = at.dataframe[0].value
    assert table["task"].tolist() == ["m0", "<script>x</script>", "m2"]
    assert table["error"].tolist() == ["", "could not load *it*", ""]


def test_tradeoffs_page_without_sweeps_shows_no_progress() -> None:
    at = open_page("tradeoffs")
    assert not at.get("progress")
