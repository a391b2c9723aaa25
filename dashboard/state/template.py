"""The sidebar's template picker: which prompt template (core.scoring.templates) every page scores with, shown
beside the pair; by default the pair's own (the demo's plain format for the demo models, else the chat template).

`template_picker()` draws it (inside `with st.sidebar:` after the pair panel); `page_template(toggle)` is what a page
passes to core as the `chat=` argument (a template name is accepted wherever the chat flag is)."""

from __future__ import annotations

import streamlit as st

from core.scoring.templates import list_templates, load_template
from dashboard.plain import plain
from dashboard.state.pair import chat_default

TEMPLATE_KEY = "template_choice"
MODEL_DEFAULT = "model default"


def default_template() -> str:
    """The pair's own template: plain for the demo pair (taught without the chat template), else chat."""
    return "chat" if chat_default() else "plain"


def chosen_template() -> str:
    """The template the sidebar picked, or the pair's own."""
    choice = st.session_state.get(TEMPLATE_KEY, MODEL_DEFAULT)
    return default_template() if choice in (None, MODEL_DEFAULT) else choice


def page_template(chat_on: bool) -> str:
    """The template a page scores with: the sidebar's pick when one is made; with "model default" the page's own
    *Chat template* toggle chooses between the model's chat template and plain text."""
    choice = st.session_state.get(TEMPLATE_KEY, MODEL_DEFAULT)
    if choice in (None, MODEL_DEFAULT):
        return "chat" if chat_on else "plain"
    return choice


def template_picker() -> str:
    """A select box of the shipped templates, "model default" first, with the chosen template's description."""
    options = [MODEL_DEFAULT, *list_templates()]
    st.selectbox(
        "Template",
        options,
        key=TEMPLATE_KEY,
        format_func=lambda name: f"model default ({default_template()})" if name == MODEL_DEFAULT else name,
        help=(
            "How questions and answers become tokens (as open-unlearning's template configs). A template picked here is"
            " used by every page; with the model default, each page's Chat template toggle chooses chat or plain."
        ),
    )
    name = chosen_template()
    st.caption(plain(load_template(name).description))
    return name
