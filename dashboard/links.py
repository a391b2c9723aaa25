"""A page's inputs in the URL, so a link reproduces the view: read the parameters a link holds, tell a link the
session has not written itself (a new or edited one) from the session's own, and write the inputs back."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

Params = dict[str, str | tuple[str, ...]]
SEEN_KEPT = 32  # how many of the session's own earlier parameter sets still count as its own


@dataclass(frozen=True)
class PageLink:
    """The query parameters of one page: `keys` in the order written, `repeated` those given once per value (read
    as a tuple), and `seen_key` the session-state key holding the parameters the session last wrote or read (and,
    under `seen_key` + "_earlier", the ones it wrote or read before those)."""

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
        """The parameters of a link the session has neither written nor read before, or None (no parameters, or
        the session's own); once returned they count as seen.

        Not only the last ones: a rerun carries the browser's address as it was when the rerun was asked for, and
        the session may have written newer parameters since. Typing a prompt and then an answer at once does that:
        the prompt's run writes its link while the answer's rerun is already on its way with the link before it.
        Taken for a new link, that older address put the earlier inputs back over the ones just typed (and scored
        them, when it held score=1). An address the session wrote or read itself is never a new link; one pasted
        or edited in the address bar opens a new session anyway."""
        wanted = self.params()
        if not wanted or wanted == st.session_state.get(self.seen_key) or wanted in self._earlier():
            return None
        self._see(wanted)
        return wanted

    def write(self, params: Params) -> None:
        """Put `params` into the URL, only when something changed (another value, or a parameter not this page's)."""
        self._see(params)
        if self.params() != params or any(key not in self.keys for key in st.query_params):
            st.query_params.from_dict(
                {key: list(value) if key in self.repeated else value for key, value in params.items()}
            )

    def _earlier(self) -> list[Params]:
        return st.session_state.get(f"{self.seen_key}_earlier", [])

    def _see(self, params: Params) -> None:
        """`params` become the last seen; the ones before them join the earlier ones (the newest SEEN_KEPT)."""
        last = st.session_state.get(self.seen_key)
        if last is not None and last != params:
            earlier = [seen for seen in self._earlier() if seen != last and seen != params]
            st.session_state[f"{self.seen_key}_earlier"] = [*earlier, last][-SEEN_KEPT:]
        st.session_state[self.seen_key] = params
