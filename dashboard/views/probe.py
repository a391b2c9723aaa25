"""Probe: score a prompt (and answer) under both models; coloured tokens, table and Δ chart; generate both.

The inputs live in the URL (prompt, answer, chat, topk, view, and score=1 once they are scored), so a link
reproduces the view: opening it fills the inputs and, with score=1, scores them as soon as a pair is loaded.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.analyses.probe import GenerationResult, GenerationSettings, ProbeRequest, ProbeResult, generate, score
from core.common.limits import MAX_TEXT_CHARS
from core.models.pair import ModelPair
from core.present import numbers
from core.present.figures.probe import comparison_reading, token_shift_figure, token_table
from core.present.highlight import VIEWS, default_scale, legend_html, token_html
from dashboard.boundary import fragment, report_errors
from dashboard.exports import chart, csv_download
from dashboard.links import PageLink
from dashboard.plain import plain
from dashboard.question import available_examples, example_picker, use_example
from dashboard.state import keys
from dashboard.state.pair import (
    busy_note,
    chat_default,
    current_pair,
    pair_key,
    pair_or_progress,
    shared_model_job,
)
from dashboard.state.sidebar import sidebar
from dashboard.state.template import page_template

EXAMPLE_PILLS = 4  # one-click examples per split (all of them are in the picker)
TOP_K_RANGE = (1, 20)
DEFAULTS = {
    keys.PROBE_PROMPT: "", keys.PROBE_ANSWER: "", keys.PROBE_TOPK: 5, keys.PROBE_VIEW: "delta", keys.PROBE_NEW: 48,
    keys.PROBE_SAMPLE: False, keys.PROBE_TEMPERATURE: 1.0, keys.PROBE_SEED: 0,
}  # fmt: skip
LINK = PageLink(("prompt", "answer", "chat", "topk", "view", "score"), seen_key="probe_url")
AUTOSCORE = "probe_autoscore"  # session key: score the inputs once a pair is loaded (a link's score=1, a handover)
STORY = "probe_story"  # session key: the first visit's (pair key, retain example, its result dict, forget inputs)
NUMBER = st.column_config.NumberColumn(format=numbers.TABLE_NUMBER)
PROBABILITY = st.column_config.NumberColumn(format=numbers.TABLE_PROBABILITY)
TABLE_COLUMNS = {
    "logprob_base": NUMBER,
    "logprob_unlearned": NUMBER,
    "delta": st.column_config.NumberColumn("Δ log-prob", format=numbers.TABLE_SIGNED, help="unlearned − base"),
    "prob_base": PROBABILITY,
    "prob_unlearned": PROBABILITY,
    "entropy_base": NUMBER,
    "entropy_unlearned": NUMBER,
    "kl": NUMBER,
}
MEANWHILE = (
    "Meanwhile: pick an example or type a question (it is scored once the models are ready); **Tradeoffs** shows the "
    "demo experiment's evaluated checkpoints without a model."
)
VIEW_LABELS = {"delta": "Δ log-prob", "base": "base log-prob", "unlearned": "unlearned log-prob"}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def restore_from_url() -> list[str]:
    """Fill the inputs from a link the session has not written itself (a new or edited link); returns what was
    ignored, so the page can say why. With score=1 the inputs are scored once a pair is loaded."""
    wanted = LINK.new_params()
    if wanted is None:
        return []
    state, ignored = st.session_state, []
    for key, state_key in (("prompt", keys.PROBE_PROMPT), ("answer", keys.PROBE_ANSWER)):
        if key in wanted and len(wanted[key]) > MAX_TEXT_CHARS:
            ignored.append(f"{key} ({len(wanted[key]):,} characters, more than the {MAX_TEXT_CHARS:,} allowed)")
        elif key in wanted:
            state[state_key] = wanted[key]
    if "chat" in wanted:
        if wanted["chat"].lower() in TRUE + FALSE:
            state[keys.PROBE_CHAT] = wanted["chat"].lower() in TRUE
        else:
            ignored.append(f"chat={wanted['chat']!r} (use 1 or 0)")
    if "topk" in wanted:
        low, high = TOP_K_RANGE
        if wanted["topk"].isdigit() and low <= int(wanted["topk"]) <= high:
            state[keys.PROBE_TOPK] = int(wanted["topk"])
        else:
            ignored.append(f"topk={wanted['topk']!r} (a whole number from {low} to {high})")
    if "view" in wanted:
        if wanted["view"] in VIEWS:
            state[keys.PROBE_VIEW] = wanted["view"]
        else:
            ignored.append(f"view={wanted['view']!r} (one of {', '.join(VIEWS)})")
    if wanted.get("score") == "1":
        state[AUTOSCORE] = True
    return ignored


def write_url(inputs: dict[str, Any], scored: bool) -> None:
    """Put the inputs (and score=1 when the result shown is theirs) into the URL, only when something changed."""
    params = {"prompt": inputs["prompt"], "answer": inputs["answer"]}
    params = {key: value for key, value in params.items() if value}
    params |= {"chat": "1" if inputs["chat"] else "0", "topk": str(inputs["top_k"]), "view": inputs["view"]}
    if scored:
        params["score"] = "1"
    LINK.write(params)


def example_pickers() -> None:
    """The demo questions: a few one-click pills per split, and a picker with all of them (in a popover, so the
    inputs stay compact and the result stays in view)."""
    choices = available_examples()
    if not choices:
        st.caption("No demo examples (the demo data is missing).")
        return
    for split in ("forget", "retain"):
        indices = [i for i, example in enumerate(choices) if example.split == split][:EXAMPLE_PILLS]
        st.pills(
            f"{split.capitalize()}-set examples",
            indices,
            format_func=lambda i: choices[i].pill,
            key=f"probe_pill_{split}",
            on_change=use_example,
            args=("probe", choices, f"probe_pill_{split}"),
        )
    example_picker("probe", choices)


def draw_inputs() -> None:
    """Prompt and answer side by side, then one row of settings (their values live in session state, so links
    can set them); the examples and the generation settings open in popovers."""
    st.session_state.setdefault(keys.PROBE_CHAT, chat_default())  # demo models were taught without the template
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    left, right = st.columns([3, 2])
    left.text_area(
        "Prompt",
        key=keys.PROBE_PROMPT,
        height=68,
        max_chars=MAX_TEXT_CHARS,
        placeholder="Ask something from the forget set…",
    )
    right.text_input(
        "Reference answer (optional)",
        key=keys.PROBE_ANSWER,
        max_chars=MAX_TEXT_CHARS,
        help="Scored token by token; leave empty to score the prompt itself.",
    )
    cols = st.columns([1.1, 1.3, 0.9, 0.9, 2.6, 1.3], vertical_alignment="bottom")
    with cols[0].popover("Examples", icon=":material/list:"):
        example_pickers()
    cols[1].toggle("Chat template", key=keys.PROBE_CHAT)
    cols[2].number_input("top-k", min_value=TOP_K_RANGE[0], max_value=TOP_K_RANGE[1], key=keys.PROBE_TOPK)
    cols[3].number_input("new tokens", min_value=1, max_value=256, key=keys.PROBE_NEW)
    cols[4].segmented_control(
        "Colour by",
        list(VIEWS),
        format_func=VIEW_LABELS.get,
        key=keys.PROBE_VIEW,
        help="; ".join(f"{VIEW_LABELS[view]}: {text}" for view, text in VIEWS.items()),
    )
    with cols[5].popover("Generation", icon=":material/tune:"):
        sample = st.toggle("Sample", key=keys.PROBE_SAMPLE, help="Off: greedy decoding. On: sampled with the seed.")
        st.number_input(
            "Temperature", min_value=0.05, max_value=5.0, step=0.1, key=keys.PROBE_TEMPERATURE, disabled=not sample
        )
        st.number_input("Seed", min_value=0, step=1, key=keys.PROBE_SEED, disabled=not sample)


def current_inputs() -> dict[str, Any]:
    """The inputs as the widgets hold them in session state, also in a run that did not redraw the widgets (the
    Score panel reruns on its own)."""
    state = st.session_state
    return {
        "prompt": state[keys.PROBE_PROMPT],
        "answer": state[keys.PROBE_ANSWER],
        "chat": bool(state[keys.PROBE_CHAT]),
        "top_k": int(state[keys.PROBE_TOPK]),
        "view": state[keys.PROBE_VIEW] or "delta",
        "max_new": int(state[keys.PROBE_NEW]),
    }


def current_settings(inputs: dict[str, Any]) -> GenerationSettings:
    state = st.session_state
    return GenerationSettings(
        max_new_tokens=inputs["max_new"],
        do_sample=bool(state[keys.PROBE_SAMPLE]),
        temperature=float(state[keys.PROBE_TEMPERATURE]),
        seed=int(state[keys.PROBE_SEED]),
    )


def scored_inputs(inputs: dict[str, Any]) -> tuple:
    return (inputs["prompt"], inputs["answer"], page_template(inputs["chat"]), inputs["top_k"])


def run_score(pair: ModelPair, inputs: dict[str, Any]) -> None:
    """Score the inputs (and, on the first visit, the retain example next to them, in the same batch)."""
    story = st.session_state.get(STORY)
    retain = story[1] if story and story[0] is None else None  # the first visit's retain example, not yet scored
    with report_errors(), busy_note("Scoring under both models…"), shared_model_job("probe"):
        requests = [ProbeRequest(inputs["prompt"], inputs["answer"] or None)]
        if retain is not None:
            requests.append(ProbeRequest(retain.question, retain.answer))
        results = score(pair, requests, chat=page_template(inputs["chat"]), top_k=inputs["top_k"])
        st.session_state[keys.PROBE_RESULT] = (pair_key(), results[0].to_dict())  # the Report page reads this pair too
        st.session_state["probe_result_inputs"] = scored_inputs(inputs)
        st.session_state[keys.PROBE_SCORINGS] = st.session_state.get(keys.PROBE_SCORINGS, 0) + 1
        if retain is not None:
            st.session_state[STORY] = (pair_key(), retain, results[1].to_dict(), scored_inputs(inputs))


def draw_tokens(result: ProbeResult, view: str) -> None:
    """The legend and the coloured tokens, in a block that says which of the session's scorings drew it (a browser
    test waits for a new number after clicking Score; the text alone cannot tell a rescoring of the same inputs)."""
    scale = default_scale(result, view)
    scoring = int(st.session_state.get(keys.PROBE_SCORINGS, 0))
    st.html(f'<div data-scoring="{scoring}">{legend_html(view, scale)}{token_html(result, view, scale)}</div>')
    if result.truncated:
        st.warning("The prompt was longer than the context and was truncated from the left.")


def delta_metric(result: ProbeResult, label: str = "Answer log-prob Δ (unlearned − base)") -> None:
    st.metric(
        label,
        f"{result.delta:+.3f}",  # nats: fixed decimals, so the decimal point stays in place from one answer to the next
        help=f"log p(answer): base {numbers.log_prob(result.answer_logprob_base, 3)}, "
        f"unlearned {numbers.log_prob(result.answer_logprob_unlearned, 3)} (nats, summed over the answer's tokens)",
    )


def draw_story(forget: ProbeResult, retain: ProbeResult, view: str) -> None:
    """The first visit: the forget example and a retain example side by side, with a sentence that reads them."""
    key = pair_key()
    st.info(plain(comparison_reading(forget, retain, key[0], key[1])), icon=":material/lightbulb:")
    left, right = st.columns(2)
    with left:
        st.markdown("**Forget-set question** (what unlearning should remove)")
        draw_tokens(forget, view)
        delta_metric(forget)
    with right:
        st.markdown("**Retain-set question** (what it should keep)")
        draw_tokens(retain, view)
        delta_metric(retain, "Retain answer log-prob Δ")


def draw_details(result: ProbeResult) -> None:
    figure = token_shift_figure(result)
    chart(figure, "token log-prob shift", key="probe_delta_chart")
    table = token_table(result)
    st.dataframe(table, hide_index=True, key="probe_table", column_config=TABLE_COLUMNS)
    csv_download(table, "Download token table (CSV)", "probe_tokens.csv", key="probe_download")


def draw_generation(gen: GenerationResult, view: str) -> None:
    st.subheader("Generations")
    settings = gen.settings
    how = f"sampled, temperature {settings.temperature}, seed {settings.seed}" if settings.do_sample else "greedy"
    st.caption(f"{settings.max_new_tokens} new tokens at most, {how}")
    left, right = st.columns(2)
    for column, side, scored in ((left, "base", gen.base_scored), (right, "unlearned", gen.unlearned_scored)):
        column.markdown(f"**{side}** — its own text scored by both ({VIEWS[view]})")
        column.html(token_html(scored, view, default_scale(scored, view), show_context=False))
        column.caption(
            f"log-prob under base {numbers.log_prob(scored.answer_logprob_base)}, "
            f"under unlearned {numbers.log_prob(scored.answer_logprob_unlearned)}"
        )


@fragment
def score_panel() -> None:
    """Score / Generate and the results, right under the buttons (in view at 1400×900 without scrolling). A
    fragment: clicking Score reruns only these few elements, so the browser has almost nothing to redraw while the
    two forward passes share its CPU. Its buttons stay disabled until the pair is loaded.

    The only fragment on the page. The inputs above it are not one: with the Score panel a fragment inside theirs,
    a Score click while an input's rerun of the outer fragment was still running (an example picked, then Score at
    once) made Streamlit's frontend fail ("'setIn' cannot be called on an ElementNode") and the page stopped
    answering. Editing an input now reruns the whole page. The load's progress is drawn after the panel, at the
    page's level, because a fragment that redraws itself every second must not sit inside another fragment (see
    pair_or_progress)."""
    inputs = current_inputs()
    cols = st.columns([1, 2, 4])
    pair = current_pair()
    score_clicked = cols[0].button("Score", type="primary", key="probe_score", disabled=pair is None)
    generate_clicked = cols[1].button("Generate from both", key="probe_generate", disabled=pair is None)
    if pair is None:
        return
    retell_story(inputs)
    if score_clicked or st.session_state.pop(AUTOSCORE, False):
        run_score(pair, inputs)
    if generate_clicked:
        with report_errors(), busy_note("Generating from both models…"), shared_model_job("generation"):
            settings = current_settings(inputs)
            generated = generate(
                pair, inputs["prompt"], chat=page_template(inputs["chat"]), settings=settings, top_k=inputs["top_k"]
            )
            st.session_state["probe_generation"] = (pair_key(), generated.to_dict())
    draw_results(inputs)
    generation = st.session_state.get("probe_generation")
    if generation and generation[0] == pair_key():
        draw_generation(GenerationResult.from_dict(generation[1]), inputs["view"])


def draw_results(inputs: dict[str, Any]) -> None:
    """The stored result of the session's pair: with the retain example beside it while the inputs are still the
    first visit's, alone otherwise."""
    stored = st.session_state.get(keys.PROBE_RESULT)
    current = bool(stored) and stored[0] == pair_key()
    up_to_date = current and st.session_state.get("probe_result_inputs") == scored_inputs(inputs)
    write_url(inputs, scored=up_to_date)
    if not current:
        return
    result = ProbeResult.from_dict(stored[1])
    story = st.session_state.get(STORY)
    if up_to_date and story and story[0] == pair_key() and story[3] == scored_inputs(inputs):
        draw_story(result, ProbeResult.from_dict(story[2]), inputs["view"])
    else:
        if not up_to_date:
            st.caption("The scores below are for earlier inputs; press Score to update them.")
        draw_tokens(result, inputs["view"])
        delta_metric(result)
    draw_details(result)


def retell_story(inputs: dict[str, Any]) -> None:
    """A new pair while the inputs are still the first visit's (base vs target opened first, then the default
    pair): score the forget and retain examples again under it, so the story is told for the pair on screen."""
    story = st.session_state.get(STORY)
    if story and story[0] not in (None, pair_key()) and story[3] == scored_inputs(inputs):
        st.session_state[STORY] = (None, story[1], None, None)
        st.session_state[AUTOSCORE] = True


def first_visit() -> None:
    """A first visit with nothing asked yet (no link, no handover, empty inputs): fill in the first forget-set
    question and score it, with the first retain-set question beside it, as soon as the pair is loaded."""
    state = st.session_state
    asked = bool(st.query_params) or state.get(keys.PROBE_PROMPT) or state.get(keys.PROBE_RESULT)
    if state.get(keys.PROBE_STORY_STARTED) or asked:
        state[keys.PROBE_STORY_STARTED] = True
        return
    state[keys.PROBE_STORY_STARTED] = True
    choices = available_examples()
    forget = next((example for example in choices if example.split == "forget"), None)
    retain = next((example for example in choices if example.split == "retain"), None)
    if forget is None or retain is None:
        return
    state[keys.PROBE_PROMPT], state[keys.PROBE_ANSWER] = forget.question, forget.answer
    state[STORY] = (None, retain, None, None)  # scored with the forget question (run_score)
    state[AUTOSCORE] = True


sidebar()
st.title("Probe")
ignored = restore_from_url()
handover = st.session_state.pop(keys.PROBE_HANDOVER, None)  # an item opened from the Dataset page: score it at once
if handover:
    st.session_state[keys.PROBE_PROMPT], st.session_state[keys.PROBE_ANSWER] = handover["prompt"], handover["answer"]
    st.session_state[AUTOSCORE] = True
if ignored:
    st.warning(f"Ignored from the link: {plain('; '.join(ignored))}.")  # the link's values, shown as typed
first_visit()
draw_inputs()
score_panel()
if current_pair() is None:  # right under the buttons, outside the Score fragment: the load's live progress (or a hint)
    pair_or_progress(MEANWHILE)
