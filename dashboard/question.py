"""The prompt + answer inputs of the Attribution and Layers pages: prefilled from the Probe page, or a demo example."""

from __future__ import annotations

import streamlit as st

from core.common.errors import UserError
from core.common.limits import MAX_TEXT_CHARS
from core.data.examples import Example, demo_examples
from dashboard.state import keys
from dashboard.state.pair import chat_default
from dashboard.state.template import page_template


@st.cache_data(show_spinner=False)
def examples() -> list[Example]:
    """The demo forget and retain questions (a UserError, not cached, when the demo data is missing)."""
    return demo_examples()


def available_examples() -> list[Example]:
    """The demo examples, or none when the demo data is missing (the inputs still work)."""
    try:
        return examples()
    except UserError:
        return []


def question_keys(prefix: str) -> tuple[str, str, str]:
    """The session-state keys of the prompt, answer and chat inputs of page `prefix`."""
    prompt_key, answer_key, chat_key = (keys.question_key(prefix, name) for name in keys.QUESTION_INPUTS)
    return prompt_key, answer_key, chat_key


def use_example(prefix: str, choices: list[Example], key: str) -> None:
    """Fill `{prefix}_prompt` and `{prefix}_answer` with the example picked in widget `key` (a widget callback: it
    runs before those inputs are drawn)."""
    picked = st.session_state.get(key)
    if picked is not None:
        prompt_key, answer_key, _ = question_keys(prefix)
        st.session_state[prompt_key], st.session_state[answer_key] = choices[picked].question, choices[picked].answer


def example_picker(prefix: str, choices: list[Example]) -> None:
    """A picker with every demo example; picking one fills the page's prompt and answer."""
    st.selectbox(
        "Example from the demo forget / retain sets",
        range(len(choices)),
        index=None,
        format_func=lambda i: choices[i].label,
        placeholder="Pick a question to fill in the prompt and answer…",
        key=f"{prefix}_example",
        on_change=use_example,
        args=(prefix, choices, f"{prefix}_example"),
    )


def question_inputs(prefix: str) -> tuple[str, str, str]:
    """Example picker, prompt, answer and chat toggle under `{prefix}_*` keys; returns (prompt, answer, template):
    the sidebar's template, or with "model default" chat or plain as the toggle says (state.template.page_template).

    The inputs take over the Probe page's prompt and answer whenever they changed there, so a question probed there
    is one click away here (edits made here stay until then); the chat toggle starts from the Probe page's, else the
    pair's default (demo models were taught without the template).
    """
    prompt_key, answer_key, chat_key = question_keys(prefix)
    probed = tuple(st.session_state.get(key) or "" for key in (keys.PROBE_PROMPT, keys.PROBE_ANSWER))
    if any(probed) and st.session_state.get(f"{prefix}_seeded") != probed:  # a new question on Probe: take it over
        st.session_state[prompt_key], st.session_state[answer_key] = probed
        st.session_state[f"{prefix}_seeded"] = probed
    st.session_state.setdefault(chat_key, st.session_state.get(keys.PROBE_CHAT, chat_default()))
    choices = available_examples()
    if choices:
        example_picker(prefix, choices)
    prompt = st.text_area(
        "Prompt",
        key=prompt_key,
        height=90,
        max_chars=MAX_TEXT_CHARS,
        placeholder="Ask something from the forget set…",
    )
    answer = st.text_input(
        "Answer",
        key=answer_key,
        max_chars=MAX_TEXT_CHARS,
        help="The answer whose log-probability is explained.",
    )
    chat = st.toggle("Chat template", key=chat_key)
    return prompt, answer, page_template(chat)
