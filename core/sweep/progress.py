"""A sweep's progress: per-task status and an ETA on the terminal (tqdm), and a small JSON file the sweep rewrites
as it goes, which the dashboard's Tradeoffs page reads (dashboard/views/sweep_progress.py).

The file is `<out>/.sweep/progress.json`; a sweep writing inside the cache home also mirrors it to
`<cache home>/sweeps/<hash of out>.json`, the one folder the dashboard looks in (it never walks result trees for
them)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.common.cache import atomic_write_text, cache_home, content_hash
from core.common.limits import MAX_RESULT_FILE_BYTES
from core.sweep.store import TaskStore

PROGRESS_FORMAT = "unlearning-lens/sweep-progress/1"
PROGRESS_FILE = "progress.json"
SWEEPS_FOLDER = "sweeps"
WRITE_EVERY_S = 1.0
MAX_LISTED_SWEEPS = 20  # progress files the dashboard reads, newest first
STATES = ("queued", "running", "done", "skipped", "failed")


@dataclass
class TaskView:
    """What the driver knows of one task."""

    label: str
    key: str
    state: str = "queued"
    fraction: float = 0.0
    attempt: int = 0
    host: str | None = None
    started: float | None = None
    seconds: float | None = None
    error: str | None = None

    def remaining_s(self, now: float) -> float | None:
        """Seconds left by this task's own rate (None until it has done a little)."""
        if self.state != "running" or self.started is None or self.fraction < 0.02:
            return None
        elapsed = now - self.started
        return elapsed * (1 - self.fraction) / self.fraction


def sweep_eta(tasks: Sequence[TaskView], now: float) -> float | None:
    """Seconds until every task has finished: the slowest running task's remainder, plus the queued tasks spread
    over as many workers as are running now, each as long as the tasks finished so far (or projected)."""
    running = [task for task in tasks if task.state == "running"]
    queued = sum(task.state == "queued" for task in tasks)
    remaining = [r for task in running if (r := task.remaining_s(now)) is not None]
    durations = [task.seconds for task in tasks if task.state == "done" and task.seconds]
    durations += [now - task.started + r for task in running if task.started and (r := task.remaining_s(now))]
    if queued and not durations:
        return None
    if running and len(remaining) < len(running) and not durations:
        return None
    typical = statistics.fmean(durations) if durations else 0.0
    return max(remaining, default=0.0) + queued * typical / max(1, len(running))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


@dataclass
class SweepProgress:
    """Driver-side progress: a tqdm bar over tasks with per-task lines, and the progress file(s)."""

    command: str
    out_dir: Path
    tasks: list[TaskView]
    show: bool = True
    started: float = field(default_factory=time.time)
    _bar: Any = None
    _written: float = 0.0

    def __post_init__(self) -> None:
        self.store = TaskStore.beside(self.out_dir)
        self.by_key = {task.key: task for task in self.tasks}
        if self.show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self.tasks), desc=f"{self.command} sweep", unit="task")

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)  # beside the bar; stdout keeps the command's table or JSON

    def settle(self, key: str, state: str, seconds: float | None = None, error: str | None = None) -> None:
        """A task finished (done, skipped as finished earlier, or failed)."""
        task = self.by_key[key]
        if state != "skipped":
            self._read_status(task)  # its attempt and host, even when it ran between two polls
        task.state, task.seconds, task.error = state, seconds, error
        task.fraction = 1.0 if state in ("done", "skipped") else task.fraction
        if state == "failed":
            self.say(f"[failed] {task.label}: {error}")
        elif state == "done":
            self.say(f"[done] {task.label} in {format_seconds(seconds)}" + (f" on {task.host}" if task.host else ""))
        if self._bar is not None:
            self._bar.update(1)
        self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        """Read the running tasks' own status files; refresh the bar and the progress file (at most each second)."""
        now = time.time()
        if not force and now - self._written < WRITE_EVERY_S:
            return
        for task in self.tasks:
            if task.state in ("queued", "running"):
                self._read_status(task)
        self._written = now
        self._refresh_bar(now)
        self.write(now)

    def _read_status(self, task: TaskView) -> None:
        status = self.store.status(task.key)
        if not status or float(status.get("updated", 0)) < self.started:
            return  # not started yet, or a record of an earlier sweep
        attempt = int(status.get("attempt", 1))
        if status.get("state") != "running":
            task.attempt, task.host = attempt, status.get("host")
            return
        if task.state == "running" and attempt > task.attempt:
            self.say(f"[retry] {task.label}: attempt {attempt} on {status.get('host')}")
        elif task.state == "queued":
            self.say(f"[start] {task.label} on {status.get('host')}" + (f" (attempt {attempt})" if attempt > 1 else ""))
        task.state, task.attempt, task.host = "running", attempt, status.get("host")
        task.started, task.fraction = float(status.get("started", now_or(task.started))), float(status["fraction"])

    def _refresh_bar(self, now: float) -> None:
        if self._bar is None:
            return
        counts = self.counts()
        running = [f"{t.label} {100 * t.fraction:.0f}%" for t in self.tasks if t.state == "running"]
        parts = [f"{counts['running']} running", f"{counts['failed']} failed", f"eta {format_seconds(self.eta(now))}"]
        self._bar.set_postfix_str(" · ".join(parts) + (f" [{', '.join(running[:3])}]" if running else ""))

    def counts(self) -> dict[str, int]:
        return {state: sum(task.state == state for task in self.tasks) for state in STATES}

    def eta(self, now: float | None = None) -> float | None:
        return sweep_eta(self.tasks, now or time.time())

    def snapshot(self, state: str = "running", now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        tasks = [
            {"label": t.label, "state": t.state, "fraction": round(t.fraction, 4), "attempt": t.attempt,
             "host": t.host, "seconds": t.seconds, "error": t.error, "eta_s": t.remaining_s(now)}
            for t in self.tasks
        ]  # fmt: skip
        return {"format": PROGRESS_FORMAT, "command": self.command, "out": str(self.out_dir), "state": state,
                "started": self.started, "updated": now, "total": len(self.tasks), "counts": self.counts(),
                "eta_s": self.eta(now) if state == "running" else 0.0, "tasks": tasks}  # fmt: skip

    def write(self, now: float | None = None, state: str = "running") -> None:
        text = json.dumps(self.snapshot(state, now), indent=1)
        atomic_write_text(self.store.root / PROGRESS_FILE, text)
        mirror = dashboard_mirror(self.out_dir)
        if mirror is not None:
            atomic_write_text(mirror, text)

    def close(self, state: str) -> None:
        """The sweep ended: `finished`, `failed` (some task failed) or `interrupted`."""
        self.write(state=state)
        if self._bar is not None:
            self._bar.close()


def now_or(value: float | None) -> float:
    return value if value is not None else time.time()


def dashboard_mirror(out_dir: Path) -> Path | None:
    """`<cache home>/sweeps/<hash>.json` for a sweep writing inside the cache home; None elsewhere."""
    home = cache_home().resolve()
    out = Path(out_dir).resolve()
    if out != home and home not in out.parents:
        return None
    return home / SWEEPS_FOLDER / f"{content_hash(str(out))}.json"


def read_progress(path: Path) -> dict[str, Any] | None:
    """A progress file's contents, or None for a missing, oversized, unreadable or foreign file."""
    try:
        if path.stat().st_size > MAX_RESULT_FILE_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != PROGRESS_FORMAT or not isinstance(data.get("tasks"), list):
        return None
    return data


def recent_sweeps(home: Path | None = None, within_s: float = 3600.0) -> list[dict[str, Any]]:
    """The progress of the sweeps writing into the cache home, updated within `within_s` seconds, newest first."""
    folder = (home or cache_home()) / SWEEPS_FOLDER
    try:
        paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:MAX_LISTED_SWEEPS]
    except OSError:
        return []
    now = time.time()
    found = [data for path in paths if (data := read_progress(path)) is not None]
    return [data for data in found if now - float(data.get("updated", 0)) <= within_s]
