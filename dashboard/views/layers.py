"""Layers: where the answer appears and disappears (logit lens), how far hidden states drift on forget vs retain
items, and which weights unlearning changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.analyses.lens import (
    DriftResult,
    LensResult,
    WeightChangeResult,
    drift_sets,
    hidden_state_drift,
    logit_lens,
    weight_change,
)
from core.common.limits import MAX_DRIFT_ITEMS, MAX_PATH_CHARS
from core.present.figures.layers import drift_figure, hidden_knowledge_reading, logit_lens_figure, weight_change_figure
from dashboard.boundary import report_errors
from dashboard.exports import chart, table_download
from dashboard.question import available_examples, question_inputs
from dashboard.state import keys
from dashboard.state.pair import chat_default, pair_key, require_pair, shared_model_job
from dashboard.state.sidebar import sidebar


def stored(key: str) -> dict | None:
    """The result dict stored under `key` for the loaded pair, or None."""
    entry = st.session_state.get(key)
    return entry[1] if entry and entry[0] == pair_key() else None


def run_on_click(label: str, prefix: str, job: str, busy: str, work: Callable[[], dict], **button: Any) -> None:
    """A button (`<prefix>_compute`) that runs `work` on the shared pair under the name `job` and keeps its result
    dict under `<prefix>_result` for the loaded pair (an earlier result goes first, so a failure shows none)."""
    if st.button(label, key=f"{prefix}_compute", **button):
        st.session_state.pop(f"{prefix}_result", None)
        with report_errors(), st.spinner(busy), shared_model_job(job):
            st.session_state[f"{prefix}_result"] = (pair_key(), work())


def chart_and_table(figure: go.Figure, frame: pd.DataFrame, name: str, prefix: str) -> None:
    """A result's chart and table, each with its downloads (`<prefix>_chart`, `<prefix>_table`)."""
    chart(figure, name, key=f"{prefix}_chart")
    st.dataframe(frame, hide_index=True)
    table_download(frame, name, key=f"{prefix}_table")


sidebar()
st.title("Layers")
pair = require_pair()

# ---------------------------------------------------------------------------------------------- logit lens
st.header("Logit lens")
st.caption("The residual stream after every layer, read through the final norm and the unembedding.")
prompt, answer, chat = question_inputs("lens")
run_on_click(
    "Run the logit lens", "lens", "logit lens", "Reading every layer of both models…",
    lambda: logit_lens(pair, prompt, answer, chat).to_dict(), type="primary",
)  # fmt: skip
if (data := stored("lens_result")) is not None:
    lens = LensResult.from_dict(data)
    if lens.truncated:
        st.warning("The prompt was longer than the context and was truncated from the left.")
    reading = hidden_knowledge_reading(lens)
    (st.warning if reading.hidden else st.info)(reading.text)
    by_token = st.toggle("One line per answer token", key="lens_by_token")
    chart_and_table(logit_lens_figure(lens, by_token=by_token), lens.to_frame(), "logit lens", "lens")

# ---------------------------------------------------------------------------------------------- drift
st.header("Hidden-state drift")
st.caption("Per layer, base vs unlearned activations over every token of each item, averaged over the set.")
left, right = st.columns(2)
paths = {
    "forget": left.text_input(
        "Forget set file (empty: the demo forget set)", key="drift_forget", max_chars=MAX_PATH_CHARS
    ),
    "retain": right.text_input(
        "Retain set file (empty: the demo retain set)", key="drift_retain", max_chars=MAX_PATH_CHARS
    ),
}
left, right = st.columns(2)
limit = left.number_input("Items per set", min_value=1, max_value=MAX_DRIFT_ITEMS, value=16, key="drift_limit")
st.session_state.setdefault("drift_chat", st.session_state.get(keys.PROBE_CHAT, chat_default()))
drift_chat = right.toggle("Chat template", key="drift_chat")
run_on_click(
    "Compute drift", "drift", "hidden-state drift", "Running both models over the forget and retain items…",
    lambda: hidden_state_drift(pair, drift_sets(paths, int(limit), available_examples()), chat=drift_chat).to_dict(),
)  # fmt: skip
if (data := stored("drift_result")) is not None:
    drift = DriftResult.from_dict(data)
    chart_and_table(drift_figure(drift), drift.to_frame(), "hidden-state drift", "drift")

# ---------------------------------------------------------------------------------------------- weights
st.header("Weight change")
st.caption("‖W_unlearned − W_base‖ / ‖W_base‖ per parameter; LoRA adapters read as B·A·scaling, never merged.")
run_on_click(
    "Compute weight change", "weights", "weight comparison", "Comparing every parameter…",
    lambda: weight_change(pair).to_dict(),
)  # fmt: skip
if (data := stored("weights_result")) is not None:
    weights = WeightChangeResult.from_dict(data)
    frame = weights.to_frame().sort_values("relative_change", ascending=False)
    chart_and_table(weight_change_figure(weights), frame, "weight change", "weights")
