"""Bringing a result into view: after Compute or Run, a page whose inputs fill the screen scrolls its results' header
to the top, so the person sees the result without scrolling (the Probe page needs none: its result sits right under
its buttons)."""

from __future__ import annotations

import json

import streamlit as st
import streamlit.components.v1 as components

SCROLL = "scroll_to"  # session key: the anchor to scroll to on the next draw of its header


def request_scroll(anchor: str) -> None:
    """Ask the next draw of `results_header(…, anchor)` to bring it into view (once)."""
    st.session_state[SCROLL] = anchor


def results_header(title: str, anchor: str) -> None:
    """The results' subheader with its anchor; scrolled to the top of the page's view when requested."""
    st.subheader(title, anchor=anchor)
    if st.session_state.get(SCROLL) != anchor:
        return
    st.session_state.pop(SCROLL)
    target = json.dumps(anchor)  # an id of our own, written as a JavaScript string
    components.html(
        "<script>const target = window.parent.document.getElementById("
        + target
        + ");if (target) target.scrollIntoView({block: 'start'});</script>",
        height=0,
    )
