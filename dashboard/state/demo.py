"""The demo experiment seen from the dashboard: which stages a pair needs built, building them (or following a
background build), the pair a first start opens while one runs, and the sidebar's status panel."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from core.common.errors import UserError
from core.models.spec import DEFAULT_BASE, DEFAULT_UNLEARNED
from core.unlearn.demo import UNLEARNED as DEMO_UNLEARNED
from core.unlearn.demo import DemoExperiment, demo_model_names, demo_status
from dashboard.boundary import fragment
from dashboard.plain import plain
from dashboard.state import keys

log = logging.getLogger(__name__)
DEMO_REFRESH_S = 2.0  # how often the sidebar re-reads status.json while the demo experiment builds
INTERIM_PAIR = ("demo:base", "demo:target")  # what a first start opens while the default unlearned model builds


def demo_stages_to_build(texts: list[str]) -> list[str]:
    """The demo training stages the typed specs need that are not built yet, in build order (bad names are left to
    load_pair, which reports them)."""
    return DemoExperiment().stages_to_build(demo_model_names(texts))


def build_demo(names: list[str], show: Callable[[float, str], None]) -> None:
    """Build the named demo stages, reporting progress (fraction, message). When another process is building the
    experiment (`make run` starts one in the background), follow its status.json until the stages are there
    instead of queueing behind its lock with a silent bar; build here otherwise."""
    experiment = DemoExperiment()
    while not all(experiment.is_built(name) for name in names):
        status = read_demo_status()
        if status is None or status["state"] != "building" or status.get("pid") == os.getpid():
            experiment.build(names, progress=lambda update: show(update["fraction"], update["message"]))
            return
        show(float(status["fraction"]), f"{status['message']} (background build, process {status.get('pid')})")
        time.sleep(DEMO_REFRESH_S / 2)


def first_start_key(key: tuple) -> tuple:
    """The pair a session opens by itself. While a background build is still making the default unlearned model,
    open base vs target (ready first, a couple of minutes after `make run`) instead of waiting for it."""
    if tuple(key[:2]) != (DEFAULT_BASE, DEFAULT_UNLEARNED):
        return key
    status = read_demo_status()
    building = status is not None and status["state"] == "building" and status.get("pid") != os.getpid()
    if building and demo_stages_to_build([DEFAULT_UNLEARNED]):
        st.session_state[keys.INTERIM_OPENED] = True
        return (*INTERIM_PAIR, *key[2:])
    return key


def read_demo_status() -> dict[str, Any] | None:
    """status.json of the demo experiment, or None when it cannot be read (then the sidebar shows nothing)."""
    try:
        return demo_status()
    except (UserError, OSError, ValueError):
        log.exception("reading the demo status failed")
        return None


def draw_demo_status(status: dict[str, Any]) -> None:
    """A progress bar while the demo builds; a one-line state otherwise."""
    models = ", ".join(status.get("models") or []) or "none"
    state = status["state"]
    if state == "building":
        st.progress(float(status["fraction"]), text=f"Building the demo experiment: {plain(status['message'])}")
        st.caption(plain(f"stage {status['stage']} · {status['fraction']:.0%} · ready: {models}"))
    elif status.get("complete"):
        st.caption(plain(f"Demo experiment built ({status.get('recipe', '')}): {models}"))
    elif state in ("failed", "interrupted"):
        st.warning(plain(f"Demo build {state}: {status['message']}"))
    else:
        st.caption(f"{plain(f'Demo experiment {state}; ready: {models}.')} `python -m core demo` builds the rest.")


@fragment(run_every=DEMO_REFRESH_S)
def demo_progress_live() -> None:
    """Re-read status.json every few seconds while a build (here, in another session or the CLI) runs."""
    status = read_demo_status()
    if status is None or status["state"] != "building":
        st.rerun()  # the build ended: redraw the app once, without polling
    ready = DEMO_UNLEARNED in (status.get("models") or [])
    if st.session_state.get(keys.INTERIM_OPENED) and ready and not st.session_state.get(keys.INTERIM_READY):
        st.session_state[keys.INTERIM_READY] = True
        st.rerun()  # the default pair can be opened now: redraw the sidebar's notice as a button
    draw_demo_status(status)


def demo_panel() -> None:
    status = read_demo_status()
    if status is None:
        return
    st.subheader("Demo experiment")
    if status["state"] == "building":
        demo_progress_live()
    else:
        draw_demo_status(status)
