"""Driving the dashboard through Streamlit's AppTest as a user would, for the dashboard tests of every tier (tests/ is
on sys.path: tests/conftest.py). Model pairs are typed into the sidebar; core is then called on the pair it loaded."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.models.pair import ModelPair
from dashboard.plain import shown
from dashboard.state import keys
from dashboard.state import pair as pair_state
from dashboard.state.loader import pair_load

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
TIMEOUT = 180


def open_page(page: str, dirs: tuple[Path, Path] | None = None, **session: object) -> AppTest:
    """The app on `page` (after loading the pair `dirs` on the Probe page, if given); `session` is put in
    session_state first. The default pair is never loaded (the demo models may not exist yet)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    if dirs is not None:
        load_pair(at, *dirs)
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def text_input(at: AppTest, label: str):
    return next(t for t in at.text_input if t.label == label)


def load_pair(at: AppTest, base: Path | str, unlearned: Path | str) -> None:
    """Type both models into the sidebar and press Load pair, as a user does, then wait for the background load as
    the user waits for the progress bar, and run the page again (the browser's progress panel does that itself)."""
    text_input(at, "Base model").input(str(base))
    text_input(at, "Unlearned model").input(str(unlearned))
    button(at, "Load pair").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    wait_loaded(at)
    assert not at.exception and not at.error, [e.value for e in at.error]


def wait_loaded(at: AppTest) -> AppTest:
    """Wait for the session's pair to finish loading in the background, then run the page again."""
    if keys.PAIR_KEY in at.session_state:
        budget = at.session_state[keys.PAIR_BUDGET] if keys.PAIR_BUDGET in at.session_state else None  # noqa: SIM401 - no .get on AppTest state
        pair_load(*at.session_state[keys.PAIR_KEY], budget).wait(TIMEOUT)
    return at.run()


def load_checked_pair(at: AppTest, base: Path | str, unlearned: Path | str) -> None:
    """load_pair, and the session then holds that pair."""
    load_pair(at, base, unlearned)
    assert at.session_state[keys.PAIR_KEY][:2] == (str(base), str(unlearned))


def loaded_pair(at: AppTest) -> ModelPair:
    """The pair the sidebar loaded (st.cache_resource is shared with the test process), for direct core calls."""
    return pair_state.load_pair(*at.session_state[keys.PAIR_KEY])


def open_with_pair(page: str, dirs: tuple[Path, Path]) -> tuple[AppTest, ModelPair]:
    at = open_page(page, dirs)
    return at, loaded_pair(at)


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts on the page by key, as the spec Streamlit sends to the browser."""
    return {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def errors(at: AppTest) -> list[str]:
    """The error messages as the page shows them (they are escaped markdown: dashboard/plain.py)."""
    return [shown(error.value) for error in at.error]


def ask(at: AppTest, prefix: str, prompt: str, answer: str) -> None:
    at.text_area(key=f"{prefix}_prompt").input(prompt)
    at.text_input(key=f"{prefix}_answer").input(answer)
