"""A sweep's records on shared storage, beside its results: `<out>/.sweep/`.

`results/<key>.json` is written by the task itself, atomically, the moment its work is done: a finished task is
never lost when the driver, another task or a node dies, and a rerun of the same sweep skips every key found
here. `tasks/<key>.json` is the task's live status (attempt, host, fraction done), which the driver reads for the
progress display. A key is a hash of everything that changes the task's result, so a changed model, dataset or
setting is a new key and is computed again."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from core.common.cache import atomic_write_text

STORE_FOLDER = ".sweep"
REPORT_EVERY_S = 1.0  # a task rewrites its status file at most this often


class TaskStore:
    """The `.sweep` folder of one output folder (plain files: every node of a cluster reads and writes it)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def beside(cls, out_dir: Path | str) -> TaskStore:
        return cls(Path(out_dir) / STORE_FOLDER)

    def _result_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.json"

    def _status_path(self, key: str) -> Path:
        return self.root / "tasks" / f"{key}.json"

    def result(self, key: str) -> dict[str, Any] | None:
        """A finished task's record ({"key", "label", "seconds", "result"}), or None when it has not finished."""
        try:
            record = json.loads(self._result_path(key).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

    def write_result(self, key: str, label: str, result: Any, seconds: float) -> None:
        record = {"key": key, "label": label, "seconds": round(seconds, 3), "result": result}
        atomic_write_text(self._result_path(key), json.dumps(record))

    def status(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._status_path(key).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def write_status(self, key: str, status: dict[str, Any]) -> None:
        atomic_write_text(self._status_path(key), json.dumps(status))


class TaskReporter:
    """What a running task writes about itself: which attempt, where, how far (throttled to REPORT_EVERY_S)."""

    def __init__(self, store: TaskStore, key: str, label: str) -> None:
        self.store, self.key, self.label = store, key, label
        previous = store.status(key) or {}
        self.attempt = int(previous.get("attempt", 0)) + 1
        self.started = time.time()
        self._last = 0.0
        self.fraction_done = 0.0
        self.write("running", 0.0)

    def write(self, state: str, fraction: float, error: str | None = None) -> None:
        self.store.write_status(
            self.key,
            {"label": self.label, "state": state, "attempt": self.attempt, "host": socket.gethostname(),
             "pid": os.getpid(), "started": self.started, "updated": time.time(), "fraction": fraction,
             "error": error},
        )  # fmt: skip

    def __call__(self, fraction: float) -> None:
        self.fraction_done = max(0.0, min(1.0, fraction))
        now = time.monotonic()
        if now - self._last >= REPORT_EVERY_S:
            self._last = now
            self.write("running", self.fraction_done)
