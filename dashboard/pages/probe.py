"""Probe: score a prompt (and answer) under both models; coloured tokens, table and Δ chart; generate both."""

from __future__ import annotations

import streamlit as st

from core.errors import UserError
from core.examples import Example, demo_examples
from core.figures import token_shift_figure
from core.highlight import VIEWS, default_scale, legend_html, token_html
from core.probe import GenerationResult, GenerationSettings, ProbeRequest, ProbeResult, generate, score
from dashboard.state import pair_key, report_errors, require_pair, sidebar


@st.cache_data(show_spinner=False)
def examples() -> list[Example]:
    """The demo forget and retain questions (a UserError, not cached, when the demo data is missing)."""
    return demo_examples()


def use_example(choices: list[Example]) -> None:
    """Fill the prompt and answer widgets with the picked example (runs before they are drawn)."""
    picked = st.session_state.get("probe_example")
    if picked is not None:
        st.session_state["probe_prompt"] = choices[picked].question
        st.session_state["probe_answer"] = choices[picked].answer


sidebar()
st.title("Probe")
handover = st.session_state.pop("probe_handover", None)  # an item opened from the Dataset page
if handover:
    st.session_state["probe_prompt"], st.session_state["probe_answer"] = handover["prompt"], handover["answer"]
pair = require_pair()

try:
    choices = examples()
except UserError:
    choices = []
if choices:
    st.selectbox(
        "Example from the demo forget / retain sets",
        range(len(choices)),
        index=None,
        format_func=lambda i: choices[i].label,
        placeholder="Pick a question to fill in the prompt and answer…",
        key="probe_example",
        on_change=use_example,
        args=(choices,),
    )
prompt = st.text_area("Prompt", key="probe_prompt", height=100, placeholder="Ask something from the forget set…")
answer = st.text_input(
    "Reference answer (optional)",
    key="probe_answer",
    help="Scored token by token; leave empty to score the prompt itself.",
)
cols = st.columns([1, 1, 1, 1, 2])
chat = cols[0].toggle("Chat template", value=True, key="probe_chat")
top_k = cols[1].number_input("top-k", min_value=1, max_value=20, value=5, key="probe_topk")
max_new = cols[2].number_input("new tokens", min_value=1, max_value=256, value=48, key="probe_new")
score_clicked = cols[3].button("Score", type="primary")
generate_clicked = cols[4].button("Generate from both")

if score_clicked:
    with report_errors(), st.spinner("Scoring under both models…"):
        result = score(pair, [ProbeRequest(prompt, answer or None)], chat=chat, top_k=int(top_k))[0]
        st.session_state["probe_result"] = (pair_key(), result.to_dict())
if generate_clicked:
    with report_errors(), st.spinner("Generating from both models…"):
        settings = GenerationSettings(max_new_tokens=int(max_new))
        generated = generate(pair, prompt, chat=chat, settings=settings, top_k=int(top_k))
        st.session_state["probe_generation"] = (pair_key(), generated.to_dict())


def draw_result(result: ProbeResult) -> None:
    view = (
        st.segmented_control(
            "Colour by", list(VIEWS), default="delta", format_func=lambda v: VIEWS[v], key="probe_view"
        )
        or "delta"
    )
    scale = default_scale(result, view)
    st.html(legend_html(view, scale) + token_html(result, view, scale))
    if result.truncated:
        st.warning("The prompt was longer than the context and was truncated from the left.")
    st.metric(
        "Answer log-prob Δ (unlearned − base)",
        f"{result.delta:+.3f}",
        help=f"base {result.answer_logprob_base:.3f}, unlearned {result.answer_logprob_unlearned:.3f}",
    )
    st.plotly_chart(token_shift_figure(result), key="probe_delta_chart")
    st.dataframe(result.to_frame(), hide_index=True)


stored = st.session_state.get("probe_result")
if stored and stored[0] == pair_key():
    draw_result(ProbeResult.from_dict(stored[1]))

generation = st.session_state.get("probe_generation")
if generation and generation[0] == pair_key():
    gen = GenerationResult.from_dict(generation[1])
    st.subheader("Generations")
    left, right = st.columns(2)
    for column, side, scored in ((left, "base", gen.base_scored), (right, "unlearned", gen.unlearned_scored)):
        column.markdown(f"**{side}** — its own text scored by both (Δ = unlearned − base)")
        column.html(token_html(scored, "delta", default_scale(scored, "delta"), show_context=False))
        column.caption(
            f"log-prob under base {scored.answer_logprob_base:.2f}, "
            f"under unlearned {scored.answer_logprob_unlearned:.2f}"
        )
