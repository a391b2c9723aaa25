"""A page's inputs in the URL, so a link reproduces the view: read the parameters a link holds, tell a link the
session has not written itself (a new or edited one) from the session's own, and write the inputs back."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

Params = dict[str, str | tuple[str, ...]]


@dataclass(frozen=True)
class PageLink:
    """The query parameters of one page: `keys` in the order written, `repeated` those given once per value (read
    as a tuple), and `seen_key` the session-state key holding the parameters the session last wrote or read."""

    keys: tuple[str, ...]
    seen_key: str
    repeated: tuple[str, ...] = ()

    def params(self) -> Params:
        """This page's parameters in the URL now (the last value of a repeated one, but for `repeated` keys)."""
        params: Params = {}
        for key in self.keys:
            if key in st.query_params:
                params[key] = tuple(st.query_params.get_all(key)) if key in self.repeated else st.query_params[key]
        return params

    def new_params(self) -> Params | None:
        """The parameters of a link the session has not written itself, or None (no parameters, or the session's
        own); once returned they count as seen."""
        wanted = self.params()
        if not wanted or wanted == st.session_state.get(self.seen_key):
            return None
        st.session_state[self.seen_key] = wanted
        return wanted

    def write(self, params: Params) -> None:
        """Put `params` into the URL, only when something changed (another value, or a parameter not this page's)."""
        st.session_state[self.seen_key] = params
        if self.params() != params or any(key not in self.keys for key in st.query_params):
            st.query_params.from_dict(
                {key: list(value) if key in self.repeated else value for key, value in params.items()}
            )
