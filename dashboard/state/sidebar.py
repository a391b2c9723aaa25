"""The sidebar every page draws first: pick the pair and start its background load (never waiting for it), show
its progress, then the pair as typed (full paths on hover) with a one-line summary and its memory, and the demo
experiment's build progress."""

from __future__ import annotations

import os

import streamlit as st

from core.models.pair import ModelPair
from core.models.spec import ALLOW_PICKLE_ENV, DEFAULT_BASE, DEFAULT_UNLEARNED, TRUST_REMOTE_CODE_ENV, operator_opt_ins
from core.present.numbers import byte_size, parameters
from dashboard.plain import plain
from dashboard.state import demo, keys
from dashboard.state.inputs import keep_inputs
from dashboard.state.memory import max_memory_field, memory_lines
from dashboard.state.pair import (
    choose_pair,
    current_pair,
    live_progress,
    memory_text,
    memory_usage,
    pair_key,
    session_load,
)
from dashboard.state.template import template_picker

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
        choose_pair((DEFAULT_BASE, DEFAULT_UNLEARNED, *key[2:]), st.session_state.get(keys.PAIR_BUDGET))
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


def pair_form() -> tuple[tuple, int | None, bool]:
    """The pair form: the chosen load_pair arguments (the opt-ins from the environment), the memory budget (bytes
    or None) and whether it was sent."""
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
        budget = max_memory_field()
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
    return chosen, budget, submitted


def pair_summary(info: dict) -> str:
    """One line: parameters, dtype, device, and whether the two sides share weights (from ModelPair.describe)."""
    count = info.get("parameters") or info.get("parameter_count")
    size = byte_size(info.get("parameter_bytes", info["parameter_mb"] * 2**20))
    weights = f"{parameters(count)} parameters ({size})" if count else f"{size} of weights"
    parts = [weights, info["dtype"], info["device"]]
    if info.get("shares_backbone"):
        parts.append("one shared backbone")
    elif info.get("shared_tensors"):
        parts.append(f"{info['shared_tensors']} tensors shared by both sides")
    else:
        parts.append("no shared weights")
    if info.get("offloaded"):
        parts.append(f"offloaded: {info['offloaded']}")
    return " · ".join(plain(part) for part in parts)


def loaded_panel(pair: ModelPair) -> None:
    """The pair as typed (the resolved source and adapter paths on hover), its summary line and memory."""
    info, key = {"parameter_bytes": pair.parameter_bytes(), **pair.describe()}, pair_key()
    st.caption(":material/check_circle: Pair loaded")
    for side, typed in (("base", key[0]), ("unlearned", key[1])):
        st.caption(f"**{side}** {plain(typed)}", help=plain(info[side]))
    st.caption(pair_summary(info))
    st.caption(f"Memory: {memory_text(memory_usage(pair))}")
    for line in memory_lines(info):  # tensors shared, the budget, offloaded layers (dashboard/state/memory.py)
        st.caption(line)


def sidebar() -> None:
    """Pick the pair (demo by default, or folders / hub ids / adapters) and start loading it in the background;
    show its progress, or what is loaded and how much memory it takes; and the demo experiment's build progress.
    Nothing here waits for a model: the page below draws at once."""
    keep_inputs()
    with st.sidebar:
        st.header("Model pair")
        chosen, budget, submitted = pair_form()
        autoload = st.session_state.get(keys.AUTOLOAD, os.environ.get(AUTOLOAD_ENV, "1") != "0")
        if submitted:
            st.session_state[keys.AUTOLOAD] = False
            st.session_state.pop(keys.INTERIM_OPENED, None)
            choose_pair(chosen, budget)
        elif pair_key() is None and autoload:
            st.session_state[keys.AUTOLOAD] = False
            choose_pair(demo.first_start_key(chosen))
        pair = current_pair()
        if st.session_state.get(keys.LOAD_ERROR):
            st.error(f"Could not load the pair: {plain(st.session_state[keys.LOAD_ERROR])}")
        interim_pair_notice()
        if pair is not None:
            loaded_panel(pair)
        elif session_load() is not None:
            live_progress(meanwhile=None)  # the same panel as a page's, without the "meanwhile" line
        template_picker()  # the prompt template every page scores with (dashboard/state/template.py)
        demo.demo_panel()
