"""A load's progress inside a fragment (dashboard/state/pair.py, pair_or_progress): drawn as it is, never as the
fragment that redraws itself every second. Streamlit's frontend can fail on a fragment nested in another one
("'setIn' cannot be called on an ElementNode": the page stops answering); outside fragments the progress stays
live."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.state import pair as state_pair

LOADING = SimpleNamespace(
    base="demo:target",
    unlearned="demo:unlearned",
    summary=lambda: {"state": "loading", "fraction": 0.25, "message": "loading the models", "elapsed": 3.0},
)


def page() -> None:
    import streamlit as st

    from dashboard.boundary import fragment, in_fragment
    from dashboard.state import pair as state_pair

    st.caption(f"outside: {in_fragment()}")

    @fragment
    def panel() -> None:
        st.caption(f"inside: {in_fragment()}")
        state_pair.pair_or_progress("meanwhile inside")

    panel()
    st.caption(f"after: {in_fragment()}")
    state_pair.pair_or_progress("meanwhile outside")


@pytest.fixture
def live_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """A pair that is loading (a quarter done); each call of the timed progress fragment is recorded, not drawn."""
    calls: list = []
    monkeypatch.setattr(state_pair, "current_pair", lambda: None)
    monkeypatch.setattr(state_pair, "session_load", lambda: LOADING)
    monkeypatch.setattr(state_pair, "live_progress", lambda meanwhile=None: calls.append(meanwhile))
    return calls


def test_inside_a_fragment_the_progress_is_drawn_once_and_outside_it_is_live(live_calls: list) -> None:
    at = AppTest.from_function(page, default_timeout=60).run()
    assert not at.exception
    captions = [caption.value for caption in at.caption]
    assert captions == ["outside: False", "inside: True", "meanwhile inside", "after: False"]
    assert live_calls == ["meanwhile outside"]  # the timed fragment only where no fragment encloses it
    (bar,) = at.get("progress")  # the one drawn inside the fragment, as the load is now
    assert bar.value == 25 and "loading the models" in bar.proto.text
