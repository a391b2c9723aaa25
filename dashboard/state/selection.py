"""Choosing the pair from a page that shows many models (Checkpoints, Screen): a clicked model becomes the unlearned
side, or two picked rows become the whole pair, on every page. The sidebar stores the loaded pair's load_pair
arguments under keys.PAIR_KEY (base, unlearned, dtype, device, opt-ins) and its memory budget under
keys.PAIR_BUDGET; this chooses the new pair the way the sidebar's "Load pair" does, keeping dtype, device, the
operator's opt-ins and the budget."""

from __future__ import annotations

import streamlit as st

from core.models.spec import DEFAULT_BASE, DEFAULT_UNLEARNED, operator_opt_ins
from dashboard.state import keys
from dashboard.state.pair import choose_pair, pair_key

LAST_CHOICE = "selection_last_choice"  # the (page, choice) handled last: a selection event is acted on once


def pair_options() -> tuple:
    """The loaded pair's dtype, device and opt-ins (the defaults where none is loaded)."""
    key = pair_key()
    if key:
        return tuple(key[2:])
    opt_ins = operator_opt_ins()
    return ("auto", "auto", opt_ins["trust_remote_code"], opt_ins["allow_unsafe_weights"])


def current_specs() -> tuple[str, str]:
    """(base, unlearned) as the sidebar holds them (the default pair before one is loaded)."""
    key = pair_key()
    return (key[0], key[1]) if key else (DEFAULT_BASE, DEFAULT_UNLEARNED)


def use_pair(base: str, unlearned: str) -> bool:
    """Make (base, unlearned), with the session's options and memory budget, the pair of every page and start
    loading it, as the sidebar's "Load pair" does (dashboard.state.pair.choose_pair: checks local folders at once,
    loads in the background; a failure shows in the sidebar and the earlier pair stays). True when it was taken."""
    key = (base.strip(), unlearned.strip(), *pair_options())
    return bool(choose_pair(key, st.session_state.get(keys.PAIR_BUDGET)))


def use_as_unlearned(spec: str) -> bool:
    """Make model `spec` the unlearned side, against the sidebar's base."""
    return use_pair(current_specs()[0], spec)


def is_new_choice(page: str, choice: object) -> bool:
    """Whether `choice` (a clicked point, picked rows) differs from the last one acted on for `page`; remembers it.
    A plotly or table selection stays in session state across reruns, and must load its pair once, not on every
    rerun."""
    if st.session_state.get(LAST_CHOICE, {}).get(page) == choice:
        return False
    st.session_state[LAST_CHOICE] = {**st.session_state.get(LAST_CHOICE, {}), page: choice}
    return True


def pair_caption() -> str:
    """The pair every page uses now, for a page's note after a choice (raw text: escape it)."""
    base, unlearned = current_specs()
    return f"base {base} · unlearned {unlearned}"
