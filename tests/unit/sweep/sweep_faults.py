"""Work functions for the sweep tests that misbehave on purpose; a module of its own so that Ray's workers import
it by name (they get the test process's sys.path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.sweep.evaluate import evaluate_work

KILL_MARKER = ".kill-once"  # in a model folder: its task's worker dies mid-run, once (hidden: not a model file)
KILL_ALWAYS = ".kill-always"  # in a model folder: its task's worker dies mid-run on every attempt
CALLS = "calls.log"  # beside the model folders: one line per task attempt that started


def logged_work(candidate: Any, shared: Any, report: Any) -> dict[str, Any]:
    """evaluate_work, logging each attempt; a model folder holding KILL_MARKER has its worker process killed (no
    exception, no clean-up: as a pre-empted node or the OOM killer would) after its first batch, once."""
    folder = Path(candidate.source.spec.source)
    with open(folder.parent / CALLS, "a", encoding="utf-8") as log:
        log.write(candidate.label + "\n")
    marker = folder / KILL_MARKER

    def report_or_die(fraction: float) -> None:
        report(fraction)
        if marker.exists():
            marker.unlink()
            os._exit(1)
        if (folder / KILL_ALWAYS).exists():
            os._exit(1)

    return evaluate_work(candidate, shared, report_or_die)
