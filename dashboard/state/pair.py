"""The loaded model pair: cached across sessions and loaded one at a time, the one this session chose, loading it
(building missing demo stages first), and running work on it while other sessions share it."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import psutil
import streamlit as st
import torch

from core.common.errors import UserError
from core.common.limits import is_out_of_memory
from core.models.pair import ModelPair, model_job
from core.models.spec import DEMO_PREFIX, ModelSpec
from core.unlearn.demo import default_recipe
from dashboard.plain import plain
from dashboard.state import demo, keys

log = logging.getLogger(__name__)
_LOAD_LOCK = threading.Lock()  # two cold loads at once can exhaust memory: load in order
MB = 2**20


@st.cache_resource(show_spinner=False, max_entries=3)
def load_pair(
    base: str, unlearned: str, dtype: str, device: str, trust_remote_code: bool, allow_unsafe_weights: bool
) -> ModelPair:
    """One pair per (specs, dtype, device), shared by every browser session. The two opt-ins are the operator's
    (`operator_opt_ins()`, from the environment); the sidebar never takes them from the browser."""
    options = {
        "dtype": dtype,
        "device": device,
        "trust_remote_code": trust_remote_code,
        "allow_unsafe_weights": allow_unsafe_weights,
    }
    with _LOAD_LOCK:
        return ModelPair.load(ModelSpec.parse(base, **options), ModelSpec.parse(unlearned, **options))


@contextlib.contextmanager
def shared_model_job(job: str) -> Iterator[None]:
    """Run a block of work on the shared pair under the name `job` ("attribution", "probe", …). While another
    session's job holds a side the block needs, a line where the result will appear says "waiting for another
    session's <job>…" instead of the page hanging silently; the line goes when the side is free. Other sessions
    that wait for this block see `job` in their line."""
    slot = st.empty()

    def waiting(holder: str | None, blocked: bool) -> None:
        if blocked:
            slot.caption(f"⏳ waiting for another session's {plain(holder or 'work on the model')}…")
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
    slot.caption(f"⏳ {message}")
    try:
        yield
    finally:
        slot.empty()


def pair_key() -> tuple | None:
    return st.session_state.get(keys.PAIR_KEY)


def current_pair() -> ModelPair | None:
    """The pair chosen in the sidebar (from the cache), or None before one is loaded."""
    key = pair_key()
    if key is None:
        return None
    try:
        return load_pair(*key)
    except UserError:
        return None


def require_pair() -> ModelPair:
    """The loaded pair, or stop the page with a hint to load one."""
    pair = current_pair()
    if pair is None:
        st.info("Load a model pair in the sidebar first.")
        st.stop()
    return pair


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
    """Load the pair (building missing demo stages first, with a progress bar), and report what went wrong."""
    with st.status("Loading model pair…", expanded=False) as status:
        try:
            needed = demo.demo_stages_to_build(list(key[:2]))
            if needed:
                status.update(label=f"Building demo model(s) {', '.join(needed)}…", expanded=True)
                bar = st.progress(0.0, text="starting the demo build")
                demo.build_demo(needed, lambda fraction, message: bar.progress(min(1.0, fraction), text=plain(message)))
            load_pair(*key)
            st.session_state[keys.PAIR_KEY] = key
            status.update(label="Pair loaded", state="complete", expanded=False)
        except UserError as exc:
            status.update(label="Could not load the pair", state="error")
            st.error(plain(exc))
        except Exception as exc:  # a broken model folder must not take the app down
            if is_out_of_memory(exc):
                status.update(label="Out of memory", state="error")
                st.error("Out of memory while loading; choose bfloat16 or a smaller model.")
                return
            log.exception("loading the pair failed")
            status.update(label="Could not load the pair", state="error")
            st.error(plain(f"Could not load the pair: {type(exc).__name__}: {exc}"))
