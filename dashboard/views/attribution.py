"""Attribution: which prompt tokens drive the answer under each model, and how unlearning moved them (Δ)."""

from __future__ import annotations

import streamlit as st

from core.analyses.attribution import (
    ATTRIBUTION_METHODS,
    GRANULARITIES,
    AttributionResult,
    AttributionSettings,
    attribute,
)
from core.present.figures.attribution import MATRIX_SIDES, attribution_heatmap, attribution_matrix_figure
from dashboard.boundary import report_errors
from dashboard.exports import chart, table_download
from dashboard.options import option_inputs
from dashboard.question import question_inputs
from dashboard.state import keys
from dashboard.state.pair import pair_key, require_pair, shared_model_job
from dashboard.state.sidebar import sidebar

# Widget keys other than attribution_<option>: n_steps's from before the options were declared (links and tests
# use it); the IG rule's "method" would clash with the method picker's key.
OPTION_KEYS = {"n_steps": "attribution_steps", "method": "attribution_ig_rule"}

sidebar()
st.title("Attribution")
pair = require_pair()

prompt, answer, chat = question_inputs("attribution")
cols = st.columns(3)
method = cols[0].selectbox(
    "Method",
    ATTRIBUTION_METHODS.names(),
    format_func=lambda name: name.replace("_", " "),
    key="attribution_method",
    help="  \n".join(f"**{name.replace('_', ' ')}**: {m.description}" for name, m in ATTRIBUTION_METHODS.items()),
)
granularity = cols[1].radio(
    "Granularity", GRANULARITIES, index=GRANULARITIES.index("word"), horizontal=True, key="attribution_granularity"
)
per_token = cols[2].checkbox(
    "Per-token matrix", key="attribution_per_token", help="One row per answer token or word (slower)."
)
# The chosen method's own settings, one control per option it declares (the others keep their defaults).
chosen = option_inputs(ATTRIBUTION_METHODS.options(method), "attribution", OPTION_KEYS)

if st.button("Compute", type="primary", key="attribution_compute"):
    st.session_state.pop(keys.ATTRIBUTION_RESULT, None)
    settings = AttributionSettings(per_token=per_token, granularity=granularity, **chosen)
    spinner = st.spinner(f"Attributing with {method.replace('_', ' ')} under both models…")
    with report_errors(), spinner, shared_model_job("attribution"):
        result = attribute(pair, prompt, answer, method, chat, settings)
        st.session_state[keys.ATTRIBUTION_RESULT] = (pair_key(), result.to_dict())


def draw_convergence(result: AttributionResult) -> None:
    """Σ attributions − (F(x) − F(baseline)) per model: how far the integral is from complete."""
    columns = st.columns(2)
    for column, side in zip(columns, ("base", "unlearned"), strict=True):
        error = sum(result.convergence_delta[side])
        change = sum(result.logprob[side]) - sum(result.baseline_logprob[side])
        share = f", {abs(error) / abs(change):.1%} of the change" if change else ""
        column.metric(
            f"Convergence delta, {side}",
            f"{error:+.3g}",
            help=f"Σ attributions − (log p(answer) − log p(answer | baseline)) = {error:+.4g}, against a change "
            f"of {change:+.4g}{share}. Raise the steps when it is large.",
        )


def draw(result: AttributionResult) -> None:
    base, unlearned = sum(result.logprob["base"]), sum(result.logprob["unlearned"])
    st.caption(
        f"Answer log-prob: base {base:.3f}, unlearned {unlearned:.3f} (Δ {unlearned - base:+.3f}). "
        "Blue: the token raises the answer's log-prob; red: lowers it. Δ = unlearned − base"
        + (", attributed exactly." if result.contrast_exact else ", the difference of the two maps.")
    )
    heatmap = attribution_heatmap(result)
    chart(heatmap, "attribution heatmap", key="attribution_heatmap")
    if result.convergence_delta:
        draw_convergence(result)
    if result.settings.per_token:
        side = st.segmented_control(
            "Matrix of", list(MATRIX_SIDES), default="delta", format_func=MATRIX_SIDES.get, key="attribution_side"
        )
        matrix = attribution_matrix_figure(result, side or "delta")
        chart(matrix, f"attribution matrix {side or 'delta'}", key="attribution_matrix")
    st.caption("The maps as a table (one row per answer row × prompt feature) and the whole result as JSON:")
    left, right = st.columns(2)
    with left:
        table_download(result.to_frame(), "attribution", key="attribution_table")
    right.download_button(
        "JSON", result.to_json(), file_name="attribution.json", mime="application/json", key="attribution_json"
    )


stored = st.session_state.get(keys.ATTRIBUTION_RESULT)
if stored and stored[0] == pair_key():
    draw(AttributionResult.from_dict(stored[1]))
