"""What every page shares: the loaded model pair (cached across sessions, loaded one at a time) and errors."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import streamlit as st
import torch

from core.errors import UserError
from core.models import DEFAULT_BASE, DEFAULT_UNLEARNED, ModelPair, ModelSpec

log = logging.getLogger(__name__)
_LOAD_LOCK = threading.Lock()  # two cold loads at once can exhaust memory: load in order
AUTOLOAD_ENV = "ULENS_AUTOLOAD"  # 0: do not load the default pair when a session starts (wait for "Load pair")
DTYPES = ["auto", "float32", "bfloat16", "float16"]
DEVICES = ["auto", "cpu", "cuda", "mps"]


@st.cache_resource(show_spinner=False, max_entries=3)
def load_pair(
    base: str, unlearned: str, dtype: str, device: str, trust_remote_code: bool, allow_unsafe_weights: bool
) -> ModelPair:
    """One pair per (specs, dtype, device), shared by every browser session."""
    options = {
        "dtype": dtype,
        "device": device,
        "trust_remote_code": trust_remote_code,
        "allow_unsafe_weights": allow_unsafe_weights,
    }
    with _LOAD_LOCK:
        return ModelPair.load(ModelSpec.parse(base, **options), ModelSpec.parse(unlearned, **options))


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Show a user mistake or an out-of-memory as a message on the page; the app stays up."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc))
    except (MemoryError, torch.OutOfMemoryError):
        st.error("Out of memory. Try a shorter input, a smaller batch, bfloat16, or a smaller model.")


def pair_key() -> tuple | None:
    return st.session_state.get("pair_key")


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


def _chosen(position: int, default: str) -> str:
    """The value of the loaded pair's key at `position`, so the sidebar shows what is loaded on every page."""
    key = pair_key()
    return key[position] if key else default


def sidebar() -> None:
    """Pick the pair (demo by default, or folders / hub ids / adapters), load it, and show what is loaded."""
    with st.sidebar:
        st.header("Model pair")
        with st.form("pair"):
            base = st.text_input(
                "Base model",
                value=_chosen(0, DEFAULT_BASE),
                help="Folder, hub id, .gguf file, PEFT adapter folder, or demo:NAME",
            )
            unlearned = st.text_input(
                "Unlearned model",
                value=_chosen(1, DEFAULT_UNLEARNED),
                help="Same forms; SOURCE::adapter=DIR puts an adapter on SOURCE",
            )
            left, right = st.columns(2)
            dtype = left.selectbox("dtype", DTYPES, index=DTYPES.index(_chosen(2, "auto")))
            device = right.selectbox("device", DEVICES, index=DEVICES.index(_chosen(3, "auto")))
            trust = st.checkbox("Trust remote code", help="Runs Python code shipped with the model. Off by default.")
            unsafe = st.checkbox("Allow pickle weights", help="Loads .bin weights, which can run code.")
            submitted = st.form_submit_button("Load pair", type="primary")
        autoload = st.session_state.get("autoload", os.environ.get(AUTOLOAD_ENV, "1") != "0")
        if submitted or (pair_key() is None and autoload):
            key = (base.strip(), unlearned.strip(), dtype, device, trust, unsafe)
            st.session_state["autoload"] = False
            with st.status("Loading model pair…", expanded=False) as status:
                try:
                    load_pair(*key)
                    st.session_state["pair_key"] = key
                    status.update(label="Pair loaded", state="complete")
                except UserError as exc:
                    status.update(label="Could not load the pair", state="error")
                    st.error(str(exc))
                except (MemoryError, torch.OutOfMemoryError):
                    status.update(label="Out of memory", state="error")
                    st.error("Out of memory while loading; choose bfloat16 or a smaller model.")
                except Exception as exc:  # a broken model folder must not take the app down
                    log.exception("loading the pair failed")
                    status.update(label="Could not load the pair", state="error")
                    st.error(f"Could not load the pair: {type(exc).__name__}: {exc}")
        pair = current_pair()
        if pair is not None:
            info = pair.describe()
            st.caption(
                f"**base** {info['base']}  \n**unlearned** {info['unlearned']}  \n"
                f"{info['device']} · {info['dtype']} · {info['parameter_mb']} MB of weights"
                f"{' (one shared backbone)' if info['shares_backbone'] else ''}"
            )
