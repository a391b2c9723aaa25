"""Layers: where the answer appears and disappears (logit lens), how far hidden states drift on forget vs retain
items, and which weights unlearning changed."""

from __future__ import annotations

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
from core.present.figures_views import drift_figure, hidden_knowledge_reading, logit_lens_figure, weight_change_figure
from dashboard.boundary import report_errors
from dashboard.exports import chart_downloads, table_download
from dashboard.question import available_examples, question_inputs
from dashboard.state import chat_default, pair_key, require_pair, shared_model_job, sidebar


def stored(key: str) -> dict | None:
    """The result dict stored under `key` for the loaded pair, or None."""
    entry = st.session_state.get(key)
    return entry[1] if entry and entry[0] == pair_key() else None


sidebar()
st.title("Layers")
pair = require_pair()

# ---------------------------------------------------------------------------------------------- logit lens
st.header("Logit lens")
st.caption("The residual stream after every layer, read through the final norm and the unembedding.")
prompt, answer, chat = question_inputs("lens")
if st.button("Run the logit lens", type="primary", key="lens_compute"):
    st.session_state.pop("lens_result", None)
    with report_errors(), st.spinner("Reading every layer of both models…"), shared_model_job("logit lens"):
        st.session_state["lens_result"] = (pair_key(), logit_lens(pair, prompt, answer, chat).to_dict())
if (data := stored("lens_result")) is not None:
    lens = LensResult.from_dict(data)
    if lens.truncated:
        st.warning("The prompt was longer than the context and was truncated from the left.")
    reading = hidden_knowledge_reading(lens)
    (st.warning if reading.hidden else st.info)(reading.text)
    by_token = st.toggle("One line per answer token", key="lens_by_token")
    figure = logit_lens_figure(lens, by_token=by_token)
    st.plotly_chart(figure, key="lens_chart")
    chart_downloads(figure, "logit lens", key="lens_chart")
    frame = lens.to_frame()
    st.dataframe(frame, hide_index=True)
    table_download(frame, "logit lens", key="lens_table")

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
st.session_state.setdefault("drift_chat", st.session_state.get("probe_chat", chat_default()))
drift_chat = right.toggle("Chat template", key="drift_chat")
if st.button("Compute drift", key="drift_compute"):
    st.session_state.pop("drift_result", None)
    spinner = st.spinner("Running both models over the forget and retain items…")
    with report_errors(), spinner, shared_model_job("hidden-state drift"):
        drift = hidden_state_drift(pair, drift_sets(paths, int(limit), available_examples()), chat=drift_chat)
        st.session_state["drift_result"] = (pair_key(), drift.to_dict())
if (data := stored("drift_result")) is not None:
    drift = DriftResult.from_dict(data)
    figure = drift_figure(drift)
    st.plotly_chart(figure, key="drift_chart")
    chart_downloads(figure, "hidden-state drift", key="drift_chart")
    frame = drift.to_frame()
    st.dataframe(frame, hide_index=True)
    table_download(frame, "hidden-state drift", key="drift_table")

# ---------------------------------------------------------------------------------------------- weights
st.header("Weight change")
st.caption("‖W_unlearned − W_base‖ / ‖W_base‖ per parameter; LoRA adapters read as B·A·scaling, never merged.")
if st.button("Compute weight change", key="weights_compute"):
    st.session_state.pop("weights_result", None)
    with report_errors(), st.spinner("Comparing every parameter…"), shared_model_job("weight comparison"):
        st.session_state["weights_result"] = (pair_key(), weight_change(pair).to_dict())
if (data := stored("weights_result")) is not None:
    weights = WeightChangeResult.from_dict(data)
    figure = weight_change_figure(weights)
    st.plotly_chart(figure, key="weights_chart")
    chart_downloads(figure, "weight change", key="weights_chart")
    frame = weights.to_frame().sort_values("relative_change", ascending=False)
    st.dataframe(frame, hide_index=True)
    table_download(frame, "weight change", key="weights_table")
