"""Attribution: which prompt tokens drive the answer under each model, and how unlearning moved them (Δ)."""

from __future__ import annotations

import streamlit as st

from core.attribution import BASELINES, GRANULARITIES, METHODS, AttributionResult, AttributionSettings, attribute
from core.figures_views import MATRIX_SIDES, attribution_heatmap, attribution_matrix_figure
from core.limits import MAX_IG_STEPS
from dashboard.boundary import report_errors
from dashboard.exports import chart_downloads, table_download
from dashboard.question import question_inputs
from dashboard.state import pair_key, require_pair, shared_model_job, sidebar

STEP_METHODS = {"integrated_gradients"}  # the methods that integrate along a path (n_steps)
NO_BASELINE = {"input_x_gradient"}  # the methods that never replace a token
RESULT_KEY = "attribution_result"

sidebar()
st.title("Attribution")
pair = require_pair()

prompt, answer, chat = question_inputs("attribution")
cols = st.columns(5)
method = cols[0].selectbox(
    "Method",
    list(METHODS),
    format_func=lambda name: name.replace("_", " "),
    key="attribution_method",
    help="  \n".join(f"**{name.replace('_', ' ')}**: {m.description}" for name, m in METHODS.items()),
)
baseline = cols[1].selectbox(
    "Baseline",
    list(BASELINES),
    index=list(BASELINES).index(AttributionSettings.baseline),
    key="attribution_baseline",
    disabled=method in NO_BASELINE,
    help="What replaces a prompt token: the start of the integration path, or the ablated value.",
)
n_steps = cols[2].number_input(
    "IG steps", min_value=1, max_value=MAX_IG_STEPS, value=AttributionSettings.n_steps, key="attribution_steps",
    disabled=method not in STEP_METHODS, help="Quadrature points; more steps, smaller convergence delta.",
)  # fmt: skip
granularity = cols[3].radio(
    "Granularity", GRANULARITIES, index=GRANULARITIES.index("word"), horizontal=True, key="attribution_granularity"
)
per_token = cols[4].checkbox(
    "Per-token matrix", key="attribution_per_token", help="One row per answer token or word (slower)."
)

if st.button("Compute", type="primary", key="attribution_compute"):
    st.session_state.pop(RESULT_KEY, None)
    settings = AttributionSettings(per_token=per_token, baseline=baseline, granularity=granularity, n_steps=n_steps)
    spinner = st.spinner(f"Attributing with {method.replace('_', ' ')} under both models…")
    with report_errors(), spinner, shared_model_job("attribution"):
        result = attribute(pair, prompt, answer, method, chat, settings)
        st.session_state[RESULT_KEY] = (pair_key(), result.to_dict())


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
    st.plotly_chart(heatmap, key="attribution_heatmap")
    chart_downloads(heatmap, "attribution heatmap", key="attribution_heatmap")
    if result.convergence_delta:
        draw_convergence(result)
    if result.settings.per_token:
        side = st.segmented_control(
            "Matrix of", list(MATRIX_SIDES), default="delta", format_func=MATRIX_SIDES.get, key="attribution_side"
        )
        matrix = attribution_matrix_figure(result, side or "delta")
        st.plotly_chart(matrix, key="attribution_matrix")
        chart_downloads(matrix, f"attribution matrix {side or 'delta'}", key="attribution_matrix")
    st.caption("The maps as a table (one row per answer row × prompt feature) and the whole result as JSON:")
    left, right = st.columns(2)
    with left:
        table_download(result.to_frame(), "attribution", key="attribution_table")
    right.download_button(
        "JSON", result.to_json(), file_name="attribution.json", mime="application/json", key="attribution_json"
    )


stored = st.session_state.get(RESULT_KEY)
if stored and stored[0] == pair_key():
    draw(AttributionResult.from_dict(stored[1]))
