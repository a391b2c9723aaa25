"""The session's model pair: choosing one (its load runs in the background: dashboard/state/loader.py), the pair
once loaded, the progress a page shows while it loads, and running work on it while other sessions share it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import psutil
import streamlit as st
import torch

from core.common.errors import UserError
from core.models.pair import ModelPair, model_job
from core.models.spec import DEMO_PREFIX, ModelSpec, resolve_spec
from core.unlearn.demo import default_recipe
from dashboard.boundary import fragment, in_fragment
from dashboard.plain import plain
from dashboard.state import keys, loader
from dashboard.state.loader import PairLoad

log = logging.getLogger(__name__)
MB = 2**20
MEANWHILE = (
    "Meanwhile: **Tradeoffs** shows the demo experiment's evaluated checkpoints and **Dataset** its forget and "
    "retain questions; neither needs the models."
)
PAIR_REFRESH_S = 1.0  # how often a progress panel re-reads the background load
WAIT_TICK_S = 0.5  # how often a page that waits for the pair redraws its progress (a rerun interrupts it here)


def load_pair(
    base: str, unlearned: str, dtype: str, device: str, trust_remote_code: bool, allow_unsafe_weights: bool
) -> ModelPair:
    """The pair for these load_pair arguments, waiting for its (shared, background) load; a failure is a UserError.
    For callers that have nothing to do without it (the tests, core calls on the session's pair)."""
    return loader.pair_load(base, unlearned, dtype, device, trust_remote_code, allow_unsafe_weights, None).result()


@contextlib.contextmanager
def shared_model_job(job: str) -> Iterator[None]:
    """Run a block of work on the shared pair under the name `job` ("attribution", "probe", …). While another
    session's job holds a side the block needs, a line where the result will appear says "waiting for another
    session's <job>…" instead of the page hanging silently; the line goes when the side is free. Other sessions
    that wait for this block see `job` in their line."""
    slot = st.empty()

    def waiting(holder: str | None, blocked: bool) -> None:
        if blocked:
            who = plain(holder or "work on the model")
            slot.caption(f":material/hourglass_top: waiting for another session's {who}…")
        else:
            slot.empty()

    try:
        with model_job(job, on_wait=waiting):
            yield
    finally:
        slot.empty()


@contextlib.contextmanager
def busy_note(message: str) -> Iterator[None]:
    """A still "working" line where the result will appear, removed when the work ends. Used instead of
    st.spinner for the Probe page's sub-second passes: a browser on the same two cores re-rasterises a spinning
    icon every frame, and that CPU comes out of the forward pass (docs/PERFORMANCE.md, Dashboard). The header's
    own "Running…" indicator still moves."""
    slot = st.empty()
    slot.caption(f":material/hourglass_top: {message}")
    try:
        yield
    finally:
        slot.empty()


def pair_key() -> tuple | None:
    """The load_pair arguments of the pair this session chose (loaded, or still loading in the background)."""
    return st.session_state.get(keys.PAIR_KEY)


def session_load() -> PairLoad | None:
    """The background load of this session's pair (shared with every session that chose the same pair)."""
    key = pair_key()
    return None if key is None else loader.pair_load(*key, st.session_state.get(keys.PAIR_BUDGET))


def current_pair() -> ModelPair | None:
    """The session's pair once loaded; None before one is chosen or while it loads. A load that failed puts its
    message in the session (the sidebar shows it) and the session back on the pair it had before, if any."""
    load = session_load()
    if load is None or not load.done:
        return None
    if load.failed:
        st.session_state[keys.LOAD_ERROR] = load.error
        previous = st.session_state.pop(keys.PREVIOUS_PAIR, None)
        loader.forget_failed(load)
        if previous is None or previous == (load.key, load.max_memory):
            st.session_state.pop(keys.PAIR_KEY, None)
            return None
        st.session_state[keys.PAIR_KEY], st.session_state[keys.PAIR_BUDGET] = previous
        return current_pair()
    return load.pair


def require_pair() -> ModelPair:
    """The session's pair, for a page that has nothing to show without one. While it loads, the page shows what is
    loading, its progress and what to do meanwhile, and goes on drawing when it arrives (no reload); with no pair
    (or a failed load) it stops with a hint to load one."""
    pair = current_pair()
    if pair is not None:
        return pair
    load = session_load()
    if load is not None:
        slot = st.empty()
        while not load.wait(WAIT_TICK_S):  # each redraw is a point where a click elsewhere interrupts the wait
            with slot.container():
                progress_panel(load)
        slot.empty()
        pair = current_pair()
        if pair is not None:
            return pair
    st.info("Load a model pair in the sidebar first.")
    st.stop()
    raise AssertionError("st.stop() returned")  # pragma: no cover - st.stop raises


def choose_pair(key: tuple, max_memory: int | None = None) -> bool:
    """Make `key` this session's pair (with the memory budget `max_memory`, bytes or None) and start its background
    load (or join the one under way). Local model folders are checked here first, so a missing path or refused
    weights show at once; the rest (building demo models, loading weights) runs in the background. Returns whether
    the pair was taken."""
    try:
        check_local_specs(key)
    except UserError as exc:
        st.session_state[keys.LOAD_ERROR] = str(exc)
        return False
    previous = session_load()
    if previous is not None and previous.ready and (previous.key, previous.max_memory) != (key, max_memory):
        st.session_state[keys.PREVIOUS_PAIR] = (previous.key, previous.max_memory)
    st.session_state[keys.PAIR_KEY], st.session_state[keys.PAIR_BUDGET] = key, max_memory
    for stale in (keys.LOAD_ERROR, keys.LOAD_SEEN):
        st.session_state.pop(stale, None)
    loader.pair_load(*key, max_memory)
    return True


def check_local_specs(key: tuple) -> None:
    """Parse both specs and check the ones that name local files (fast: no weights are read). Demo names and hub
    ids are left to the background load (building, or asking the hub, takes a while)."""
    base, unlearned, dtype, device, trust_remote_code, allow_unsafe_weights = key
    options = {"dtype": dtype, "device": device}
    options |= {"trust_remote_code": trust_remote_code, "allow_unsafe_weights": allow_unsafe_weights}
    for text in (base, unlearned):
        if not str(text).strip():
            raise UserError("type a model for both sides (a folder, a hub id, a .gguf file or demo:NAME)")
        spec = ModelSpec.parse(text, **options)
        source = spec.source
        if source.startswith(DEMO_PREFIX):
            continue
        if source.startswith(("/", ".", "~")) or Path(source).expanduser().exists() or spec.adapter:
            check_pickle_only(resolve_spec(spec))


def check_pickle_only(spec: ModelSpec) -> None:
    """Refuse a local model folder whose only weights are pickle (.bin) files before its load starts, unless the
    operator opted in: the loader would refuse it too, but only after the tokenizer and config are read."""
    folder = Path(spec.source)
    if spec.allow_unsafe_weights or spec.gguf_file or not folder.is_dir():
        return
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise UserError(
            f"{spec.source} has no safetensors weights. Loading pickle (.bin) weights can run code; whoever starts "
            "the server opts in with ULENS_ALLOW_PICKLE=1 (CLI: --allow-unsafe-weights), only for a source they trust."
        )


def progress_panel(load: PairLoad, meanwhile: str | None = MEANWHILE) -> None:
    """What is loading, how far it got and since when, and what the person can do meanwhile."""
    info = load.summary()
    what = f"{plain(load.base)} vs {plain(load.unlearned)}"
    verb = {"building": "Building the demo models for", "waiting": "Waiting to load"}.get(info["state"], "Loading")
    st.markdown(f":material/downloading: **{verb} {what}** · {int(info['elapsed'])} s so far")
    st.progress(info["fraction"], text=plain(info["message"]))
    if meanwhile:
        st.caption(meanwhile)


@fragment(run_every=PAIR_REFRESH_S)
def live_progress(meanwhile: str | None = MEANWHILE) -> None:
    """The progress panel, redrawn every second while the session's pair loads; when the load ends, the whole page
    is drawn again once, now with the pair (or with the failure's message)."""
    load = session_load()
    if load is None or load.done:
        if st.session_state.get(keys.LOAD_SEEN) != pair_key():
            st.session_state[keys.LOAD_SEEN] = pair_key()
            st.rerun()
        return
    progress_panel(load, meanwhile)


def pair_or_progress(meanwhile: str | None = MEANWHILE) -> ModelPair | None:
    """The session's pair, or None after drawing what the page needs instead: the live progress of its load, or
    a hint to load one. For pages with content of their own to show while the pair loads.

    Inside a fragment the progress is drawn as it is now, not as the fragment that redraws itself every second:
    Streamlit's frontend can fail on a fragment nested in another one (the page stops with "'setIn' cannot be
    called on an ElementNode"; docs/ARCHITECTURE.md). The sidebar's own live progress, outside any fragment, still
    redraws the app when the load ends."""
    pair = current_pair()
    if pair is not None:
        return pair
    load = session_load()
    if load is not None and in_fragment():
        progress_panel(load, meanwhile)
    elif load is not None:
        live_progress(meanwhile)
    else:
        st.info("Load a model pair in the sidebar first.")
    return None


def memory_usage(pair: ModelPair) -> dict[str, float]:
    """MB held now: the pair's weights, this process's resident memory and, on CUDA, allocated/reserved memory."""
    usage = {"parameters": pair.parameter_bytes() / MB, "process_rss": psutil.Process().memory_info().rss / MB}
    if torch.device(pair.device).type == "cuda":
        usage["cuda_allocated"] = torch.cuda.memory_allocated(pair.device) / MB
        usage["cuda_reserved"] = torch.cuda.memory_reserved(pair.device) / MB
    return usage


def memory_text(usage: dict[str, float]) -> str:
    text = f"{usage['parameters']:,.1f} MB of weights · process RSS {usage['process_rss']:,.0f} MB"
    if "cuda_allocated" in usage:
        text += f" · CUDA {usage['cuda_allocated']:,.0f} MB allocated, {usage['cuda_reserved']:,.0f} MB reserved"
    return text


def is_demo_pair(key: tuple | None = None) -> bool:
    key = key or pair_key()
    return bool(key) and all(str(text).strip().lower().startswith(DEMO_PREFIX) for text in key[:2])


def chat_default() -> bool:
    """The chat-template toggles' default: the demo's own format for demo models (they were taught without the
    chat template), on for everything else (instruct models expect it)."""
    return default_recipe().chat if is_demo_pair() else True


def load_chosen(key: tuple) -> None:
    """Make `key` the session's pair as the sidebar's "Load pair" does (choose_pair: local files checked at once,
    the load in the background), saying in place what was wrong with it."""
    if not choose_pair(key):
        st.error(f"Could not load the pair: {plain(st.session_state.get(keys.LOAD_ERROR, ''))}")
