"""The sidebar every page draws first: pick the pair, load it, show what is loaded and how much memory it takes,
and the demo experiment's build progress."""

from __future__ import annotations

import os

import streamlit as st

from core.models.spec import ALLOW_PICKLE_ENV, DEFAULT_BASE, DEFAULT_UNLEARNED, TRUST_REMOTE_CODE_ENV, operator_opt_ins
from dashboard.plain import plain
from dashboard.state import demo, keys
from dashboard.state.inputs import keep_inputs
from dashboard.state.pair import current_pair, load_chosen, memory_text, memory_usage, pair_key

AUTOLOAD_ENV = "ULENS_AUTOLOAD"  # 0: do not load the default pair when a session starts (wait for "Load pair")
DTYPES = ["auto", "float32", "bfloat16", "float16"]
DEVICES = ["auto", "cpu", "cuda", "mps"]


def _chosen(position: int, default: str) -> str:
    """The value of the loaded pair's key at `position`, so the sidebar shows what is loaded on every page."""
    key = pair_key()
    return key[position] if key else default


def interim_pair_notice() -> None:
    """After a first start opened base vs target: say why, and offer the default pair once it is built."""
    key = pair_key()
    if not st.session_state.get(keys.INTERIM_OPENED) or not key or tuple(key[:2]) != demo.INTERIM_PAIR:
        return
    if demo.demo_stages_to_build([DEFAULT_UNLEARNED]):
        st.info(
            f"Opened {demo.INTERIM_PAIR[0]} vs {demo.INTERIM_PAIR[1]} while {DEFAULT_UNLEARNED} is still being built "
            "(progress below)."
        )
    elif st.button(f"Open {DEFAULT_BASE} vs {DEFAULT_UNLEARNED}", type="primary", key="open_default_pair"):
        st.session_state.pop(keys.INTERIM_OPENED, None)
        load_chosen((DEFAULT_BASE, DEFAULT_UNLEARNED, *key[2:]))
        st.rerun()


def opt_ins_text(opt_ins: dict[str, bool]) -> str:
    """The read-only sidebar line: whether model code and pickle weights may run, and who changes that (whoever
    starts the server; a checkbox here would let anyone who reaches the page switch them on)."""
    state = {True: "allowed", False: "off"}
    return (
        f"Remote model code: **{state[opt_ins['trust_remote_code']]}** · "
        f"pickle weights: **{state[opt_ins['allow_unsafe_weights']]}**. Set when the server starts "
        f"(`{TRUST_REMOTE_CODE_ENV}=1`, `{ALLOW_PICKLE_ENV}=1`; `make run TRUST_REMOTE_CODE=1 ALLOW_PICKLE=1`)."
    )


def pair_form() -> tuple[tuple, bool]:
    """The pair form: the chosen load_pair arguments (the opt-ins from the environment) and whether it was sent."""
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
        opt_ins = operator_opt_ins()
        st.caption(opt_ins_text(opt_ins))
        submitted = st.form_submit_button("Load pair", type="primary")
    chosen = (
        base.strip(),
        unlearned.strip(),
        dtype,
        device,
        opt_ins["trust_remote_code"],
        opt_ins["allow_unsafe_weights"],
    )
    return chosen, submitted


def sidebar() -> None:
    """Pick the pair (demo by default, or folders / hub ids / adapters), load it, show what is loaded and how
    much memory it takes, and the demo experiment's build progress."""
    keep_inputs()
    with st.sidebar:
        st.header("Model pair")
        chosen, submitted = pair_form()
        autoload = st.session_state.get(keys.AUTOLOAD, os.environ.get(AUTOLOAD_ENV, "1") != "0")
        if submitted:
            st.session_state[keys.AUTOLOAD] = False
            st.session_state.pop(keys.INTERIM_OPENED, None)
            load_chosen(chosen)
        elif pair_key() is None and autoload:
            st.session_state[keys.AUTOLOAD] = False
            load_chosen(demo.first_start_key(chosen))
        interim_pair_notice()
        pair = current_pair()
        if pair is not None:
            info = pair.describe()
            st.caption(
                f"**base** {plain(info['base'])}  \n**unlearned** {plain(info['unlearned'])}  \n"
                f"{info['device']} · {info['dtype']}{' · one shared backbone' if info['shares_backbone'] else ''}"
            )
            st.caption(f"Memory: {memory_text(memory_usage(pair))}")
        demo.demo_panel()
