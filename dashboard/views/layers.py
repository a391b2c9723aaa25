"""Layers: where the answer appears and disappears (logit lens), where, causally, the unlearned model removed it
(activation patching, the depth score over forget vs retain), how far hidden states drift on forget vs retain items,
and which weights unlearning changed."""

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
from core.analyses.patching import POSITIONS, DepthResult, ModelSource, PatchingResult, depth_over_sets, patch_curve
from core.common.limits import MAX_DRIFT_ITEMS, MAX_PATH_CHARS
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.present import numbers
from core.present.figures.layers import (
    causal_reading,
    depth_figure,
    depth_reading,
    drift_figure,
    hidden_knowledge_reading,
    logit_lens_figure,
    patching_figure,
    patching_frame,
    weight_change_figure,
)
from dashboard.boundary import report_errors
from dashboard.exports import chart, table_download
from dashboard.plain import plain
from dashboard.question import available_examples, question_inputs
from dashboard.state import keys
from dashboard.state.pair import chat_default, pair_key, require_pair, shared_model_job
from dashboard.state.sidebar import sidebar
from dashboard.state.template import page_template


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


def number_columns(frame: pd.DataFrame) -> dict[str, Any]:
    """Readable numbers in a table: probabilities with 3 significant digits (scientific when tiny), other floats
    with 4 (core.present.numbers' formats)."""
    formats = {}
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]):
            pattern = numbers.TABLE_PROBABILITY if column == "prob" else numbers.TABLE_NUMBER
            formats[column] = st.column_config.NumberColumn(format=pattern)
    return formats


def chart_and_table(figure: go.Figure, frame: pd.DataFrame, name: str, prefix: str) -> None:
    """A result's chart and table, each with its downloads (`<prefix>_chart`, `<prefix>_table`)."""
    chart(figure, name, key=f"{prefix}_chart")
    st.dataframe(frame, hide_index=True, column_config=number_columns(frame))
    table_download(frame, name, key=f"{prefix}_table")


@st.cache_resource(max_entries=1, show_spinner="Loading the oracle model…")
def oracle_pair(text: str, device: str, dtype: str) -> ModelPair:
    """The oracle as its own pair (both sides the oracle: one copy of its weights), kept while it is the one named."""
    spec = ModelSpec.parse(text, device=device, dtype=dtype)
    return ModelPair.load(spec, spec)


def oracle_source(text: str) -> ModelSource | None:
    """The oracle named in the box as a model source for patching, or None when the box is empty."""
    if not text.strip():
        return None
    oracle = oracle_pair(text.strip(), str(pair.device), str(pair.dtype).removeprefix("torch."))
    return lambda: oracle.use("base", "activation patching")


def depth_scores(sets: dict, chat: bool, positions: str, oracle: str) -> dict:
    """The depth score over the sets, with a progress bar (a model pass per item and direction)."""
    bar = st.progress(0.0, text="Patching every layer of each item…")
    result = depth_over_sets(
        pair, sets, chat, positions, oracle_source(oracle), lambda fraction, text: bar.progress(fraction, text=text)
    )
    bar.empty()
    return result.to_dict()


sidebar()
st.title("Layers")
pair = require_pair()

# ---------------------------------------------------------------------------------------------- logit lens
st.header("Logit lens")
st.caption(
    "The residual stream after every layer, read through the model's own head (final norm, unembedding, its logit"
    " scaling)."
)
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

# ---------------------------------------------------------------------------------------------- patching
st.header("Activation patching")
st.caption(
    "The unlearned model run on the base model's residual stream from each layer on, and the base model on the "
    "unlearned one's: the layer where the answer comes back is where the unlearned model removed it. The same "
    "prompt and answer as the lens; definitions in docs/CAUSAL.md."
)
left, right = st.columns(2)
positions = left.radio(
    "Patched positions", POSITIONS, horizontal=True, key="patch_positions",
    format_func=lambda p: "every position" if p == "all" else "the answer's only",
)  # fmt: skip
oracle_text = right.text_input(
    "Oracle model (optional: the two-stage score)", key="patch_oracle", max_chars=MAX_PATH_CHARS,
    placeholder="demo:oracle", help="A model never taught the forget set, as a model spec; loaded once.",
)  # fmt: skip
run_on_click(
    "Run activation patching", "patching", "activation patching", "Patching after every layer, both ways…",
    lambda: patch_curve(pair, prompt, answer, chat, positions, oracle_source(oracle_text)).to_dict(),
)  # fmt: skip
if (data := stored("patching_result")) is not None:
    patching = PatchingResult.from_dict(data)
    lens_data = stored("lens_result")
    st.info(plain(causal_reading(patching, LensResult.from_dict(lens_data) if lens_data else None)))
    chart_and_table(patching_figure(patching), patching_frame(patching), "activation patching", "patching")

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
drift_chat = page_template(right.toggle("Chat template", key="drift_chat"))
run_on_click(
    "Compute drift", "drift", "hidden-state drift", "Running both models over the forget and retain items…",
    lambda: hidden_state_drift(pair, drift_sets(paths, int(limit), available_examples()), chat=drift_chat).to_dict(),
)  # fmt: skip
if (data := stored("drift_result")) is not None:
    drift = DriftResult.from_dict(data)
    chart_and_table(drift_figure(drift), drift.to_frame(), "hidden-state drift", "drift")

# ---------------------------------------------------------------------------------------------- depth
st.header("Unlearning depth: forget vs retain")
st.caption(
    "The depth score of every item of the sets above (the share of each item's base–unlearned gap the unlearned "
    "model's stream carries, averaged over layers): a real erasure is deep on the forget set and absent on the "
    "retain set. Uses the patched positions and the oracle above."
)
depth_limit = st.number_input("Items per set", min_value=1, max_value=MAX_DRIFT_ITEMS, value=8, key="depth_limit")
run_on_click(
    "Compute depth scores", "depth", "depth score", "Patching every layer of each item…",
    lambda: depth_scores(drift_sets(paths, int(depth_limit), available_examples()), drift_chat, positions, oracle_text),
)  # fmt: skip
if (data := stored("depth_result")) is not None:
    depth = DepthResult.from_dict(data)
    st.info(plain(depth_reading(depth)))
    frame = pd.DataFrame(
        [{"set": name, "item": i, "depth": d, "gap": g} for name, s in depth.sets.items()
         for i, (d, g) in enumerate(zip(s.depth, s.gap, strict=True))]
    )  # fmt: skip
    chart_and_table(depth_figure(depth), frame, "depth score", "depth")

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
