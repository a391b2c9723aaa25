"""Attribution: which prompt tokens drive the answer under each model, and how unlearning moved them (Δ); whether
a map adds up to what it explains (never a silent junk map), and which method's map to believe on this prompt
(deletion / insertion curves of every method)."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from core.analyses.attribution import (
    ATTRIBUTION_METHODS,
    GRANULARITIES,
    SETTINGS_OPTIONS,
    AttributionResult,
    AttributionSettings,
    attribute,
)
from core.analyses.attribution.faithfulness import Faithfulness, compare_methods
from core.analyses.attribution.settings import default_baseline
from core.present import numbers
from core.present.figures.attribution import (
    MATRIX_SIDES,
    attribution_heatmap,
    attribution_matrix_figure,
    completeness,
    completeness_warning,
    faithfulness_figure,
    faithfulness_frame,
    faithfulness_reading,
)
from dashboard.boundary import report_errors
from dashboard.exports import chart, table_download
from dashboard.options import option_inputs
from dashboard.plain import plain
from dashboard.question import question_inputs
from dashboard.state import keys
from dashboard.state.pair import pair_key, require_pair, shared_model_job
from dashboard.state.sidebar import sidebar

# Widget keys other than attribution_<option>: n_steps's from before the options were declared (links and tests
# use it); the IG rule's "method" would clash with the method picker's key.
OPTION_KEYS = {"n_steps": "attribution_steps", "method": "attribution_ig_rule"}
# Defaults: feature ablation, the most faithful map on the demo pair's first forget example by the area between its
# deletion and insertion curves (docs/PERFORMANCE-attribution.md), with no completeness axiom to miss; its baseline
# core.analyses.attribution.settings.default_baseline (measured: docs/CAUSAL.md, "The default baseline").
DEFAULT_METHOD = "feature_ablation"
FAITHFULNESS_RESULT = "attribution_faithfulness"

sidebar()
st.title("Attribution")
pair = require_pair()

prompt, answer, chat = question_inputs("attribution")
cols = st.columns(3)
names = ATTRIBUTION_METHODS.names()
method = cols[0].selectbox(
    "Method",
    names,
    index=names.index(DEFAULT_METHOD),
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
# The baseline is always drawn: the faithfulness curves below replace features by it, whatever the method.
specs = ATTRIBUTION_METHODS.options(method)
if "baseline" not in {spec.name for spec in specs}:
    specs = (SETTINGS_OPTIONS["baseline"], *specs)
baseline = default_baseline(pair.tokenizer)
specs = tuple(replace(spec, default=baseline) if spec.name == "baseline" else spec for spec in specs)
chosen = option_inputs(specs, "attribution", OPTION_KEYS)

if st.button("Compute", type="primary", key="attribution_compute"):
    st.session_state.pop(keys.ATTRIBUTION_RESULT, None)
    settings = AttributionSettings(per_token=per_token, granularity=granularity, **chosen)
    spinner = st.spinner(f"Attributing with {method.replace('_', ' ')} under both models…")
    with report_errors(), spinner, shared_model_job("attribution"):
        result = attribute(pair, prompt, answer, method, chat, settings)
        st.session_state[keys.ATTRIBUTION_RESULT] = (pair_key(), result.to_dict())


def draw_convergence(result: AttributionResult) -> None:
    """Σ attributions − what they should sum to, per model: how far the map is from complete."""
    columns = st.columns(2)
    for column, check in zip(columns, completeness(result), strict=True):
        share = f", {numbers.percent(check.share, 1)} of it" if check.share is not None else ""
        column.metric(
            f"Convergence delta, {check.side}",
            numbers.number(check.error, sign=True),
            help=f"Σ attributions − what the map explains ({numbers.number(check.explained, sign=True)}"
            f"{share}); beyond a few % the map does not add up.",
        )


def softmax_rule_note(result: AttributionResult) -> str:
    """Why an AttnLRP map sums to less than its logit: the paper's softmax rule keeps relevance by design."""
    kept = ", ".join(
        f"{check.side} {numbers.percent(-check.error / check.explained, 0)}"
        for check in completeness(result)
        if check.explained
    )
    return (
        "AttnLRP's softmax rule (Achtibat et al. 2024, Prop. 3.1) does not conserve relevance by design: its Taylor "
        f"expansion at the attention scores keeps part of it in a bias term (here {kept} of the logit; about half "
        "on the demo SmolLM2 pair). The other rules conserve (a bias keeps its own share), so that is the gap. "
        "For a map that adds up, choose the LRP rule cp (attention weights held constant)."
    )


def draw(result: AttributionResult) -> None:
    base, unlearned = sum(result.logprob["base"]), sum(result.logprob["unlearned"])
    st.caption(
        f"Answer log-prob: base {base:.3f}, unlearned {unlearned:.3f} (Δ {unlearned - base:+.3f}). "
        "Blue: the token raises the answer's log-prob; red: lowers it. Δ = unlearned − base"
        + (", attributed exactly." if result.contrast_exact else ", the difference of the two maps.")
    )
    warning = completeness_warning(result)
    if warning:
        st.warning(plain(warning))
    if result.method == "attn_lrp" and result.settings.lrp_rule == "attnlrp":
        st.info(plain(softmax_rule_note(result)))
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


def compare(settings: AttributionSettings) -> dict:
    """Every method's map of the whole answer and its faithfulness curves, with a progress bar."""
    bar = st.progress(0.0, text="Attributing with every method…")
    _, report = compare_methods(
        pair, prompt, answer, chat, settings, progress=lambda fraction, text: bar.progress(fraction, text=text)
    )
    bar.empty()
    return report.to_dict()


st.header("Which map to believe")
st.caption(
    "Every method's map of the whole answer, then its deletion curve (prompt features replaced by the baseline, "
    "most relevant first: a faithful map makes the answer's log-prob fall fast) and insertion curve (restored in "
    "that order: it should rise fast). The larger the area between the two, the better the map tracks the model."
)
if st.button("Compare every method", key="attribution_faithfulness_compute"):
    st.session_state.pop(FAITHFULNESS_RESULT, None)
    settings = AttributionSettings(granularity=granularity, **chosen)
    with report_errors(), shared_model_job("attribution"):
        st.session_state[FAITHFULNESS_RESULT] = (pair_key(), compare(settings))
faithful = st.session_state.get(FAITHFULNESS_RESULT)
if faithful and faithful[0] == pair_key():
    report = Faithfulness.from_dict(faithful[1])
    st.info(plain(faithfulness_reading(report)))
    side = st.segmented_control(
        "Curves of", ["unlearned", "base"], default="unlearned", key="attribution_faithfulness_side"
    )
    chart(faithfulness_figure(report, side or "unlearned"), "faithfulness curves", key="attribution_faithfulness")
    frame = faithfulness_frame(report)
    st.dataframe(frame, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format=numbers.TABLE_NUMBER) for c in ("deletion_area", "insertion_area",
                                                                                 "between")})  # fmt: skip
    table_download(frame, "faithfulness", key="attribution_faithfulness_table")
