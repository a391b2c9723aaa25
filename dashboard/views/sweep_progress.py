"""Sweeps writing into the cache home, on the Tradeoffs page: one progress bar per running sweep with its tasks'
states, refreshed every few seconds while one runs; when a task finishes the whole page reruns, so the result
folders it reads (their files' mtimes key its cache) show the new results as they land.

The sweep (`python -m core evaluate … --ray`, core.sweep) writes the progress file; this page only reads it."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from core.sweep.progress import format_seconds, recent_sweeps
from dashboard.boundary import fragment
from dashboard.plain import plain

SWEEP_REFRESH_S = 3
FINISHED_SHOWN_S = 600  # a finished sweep stays on the page this long
STALE_S = 120  # a running sweep whose file is older than this has probably lost its driver
SEEN = "sweep_progress_settled"  # session key: tasks settled (done, skipped, failed) at the last look


def settled(sweeps: list[dict[str, Any]]) -> int:
    return sum(s["counts"].get(state, 0) for s in sweeps for state in ("done", "skipped", "failed"))


def task_table(sweep: dict[str, Any]) -> pd.DataFrame:
    """One row per task: label, state, percent done, attempt, host, time, error (shown as plain text cells)."""
    rows = [
        {"task": t.get("label"), "state": t.get("state"), "done %": round(100 * float(t.get("fraction") or 0)),
         "attempt": t.get("attempt"), "host": t.get("host"),
         "seconds": t.get("seconds"), "left": format_seconds(t.get("eta_s")) if t.get("eta_s") else "",
         "error": t.get("error") or ""}
        for t in sweep["tasks"]
    ]  # fmt: skip
    return pd.DataFrame(rows)


def draw_sweep(sweep: dict[str, Any], now: float) -> None:
    counts, total = sweep["counts"], max(1, int(sweep.get("total") or 1))
    finished = counts.get("done", 0) + counts.get("skipped", 0) + counts.get("failed", 0)
    age = now - float(sweep.get("updated") or 0)
    state = sweep.get("state")
    if state == "running" and age > STALE_S:
        state = f"silent for {format_seconds(age)} (its driver may have stopped)"
    eta = f", about {format_seconds(sweep.get('eta_s'))} left" if sweep.get("state") == "running" else ""
    text = f"{sweep.get('command')} sweep into {sweep.get('out')}: {finished}/{total} tasks, {state}{eta}"
    st.progress(min(1.0, finished / total), text=plain(text))
    if counts.get("failed"):
        st.caption(plain(f"{counts['failed']} task(s) failed; the others' results are written. Fix and rerun."))
    with st.expander("Tasks", expanded=False):
        st.dataframe(task_table(sweep), hide_index=True)


@fragment(run_every=SWEEP_REFRESH_S)
def sweep_progress_live() -> None:
    """Re-read the progress files while a sweep runs; rerun the page when a task has settled or all have ended."""
    sweeps = recent_sweeps(within_s=FINISHED_SHOWN_S)
    count = settled(sweeps)
    running = any(s.get("state") == "running" for s in sweeps)
    if count != st.session_state.get(SEEN) or not running:
        st.session_state[SEEN] = count
        st.rerun(scope="app")  # new results landed (the page re-reads its folders), or the sweeps ended
    draw_sweeps(sweeps)


def draw_sweeps(sweeps: list[dict[str, Any]]) -> None:
    now = time.time()
    for sweep in sweeps:
        draw_sweep(sweep, now)


def sweep_progress() -> None:
    """The include for a page: nothing without a recent sweep, a live view while one runs, else a static one."""
    sweeps = recent_sweeps(within_s=FINISHED_SHOWN_S)
    if not sweeps:
        return
    st.session_state[SEEN] = settled(sweeps)
    if any(s.get("state") == "running" for s in sweeps):
        sweep_progress_live()
    else:
        draw_sweeps(sweeps)
