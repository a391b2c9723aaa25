"""Widget values kept across pages: Streamlit forgets a widget's value once a run goes by without that widget."""

from __future__ import annotations

import streamlit as st

from dashboard.state import keys

KEPT_INPUTS = (
    *(keys.question_key(page, name) for page in keys.QUESTION_PAGES for name in keys.QUESTION_INPUTS),
    *(keys.PROBE_TOPK, keys.PROBE_VIEW, keys.PROBE_NEW, keys.PROBE_SAMPLE, keys.PROBE_TEMPERATURE, keys.PROBE_SEED),
)  # widget keys only: other session-state keys are never forgotten


def keep_inputs() -> None:
    """Streamlit forgets a widget's value once a run goes by without that widget (another page): writing the
    values back at the top of every page keeps each page's prompt, answer and settings across page switches."""
    for key in KEPT_INPUTS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
