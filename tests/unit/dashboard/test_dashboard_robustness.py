"""The Robustness page through AppTest on a tiny pair: its charts and table equal what core.attacks.runner
computes for
the same settings; base against itself says there is nothing to recover; a bad option is a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apptest_pages import wait_loaded
from streamlit.testing.v1 import AppTest
from tiny_models import save_tiny_model_dir

from core.attacks.base import RobustnessSettings
from core.attacks.runner import run_attacks
from core.data.qa import load_demo_splits
from core.present.figures.robustness import recovery_figure, relearning_figure
from dashboard.state import keys
from dashboard.state import pair as pair_state

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "dashboard" / "app.py"
TIMEOUT = 180
ATTACKS = ["paraphrase", "quantize_int8", "relearn"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(autouse=True)
def isolated(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app), and what this module needs besides."""
    monkeypatch.delenv("ULENS_DEMO_QUICK", raising=False)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny random models whose word vocabulary covers the demo set (so questions are not all <unk>)."""
    data = load_demo_splits()
    texts = [t for split in data.splits().values() for i in split for t in (i.question, i.answer)]
    words = tuple(sorted({word for text in texts for word in text.split()}))
    root = tmp_path_factory.mktemp("pair")
    return save_tiny_model_dir(root / "base", seed=0, words=words), save_tiny_model_dir(root / "other", 1, words)


def open_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.run()
    at.switch_page("views/robustness.py").run()
    assert not at.exception
    return at


def load(at: AppTest, base: Path, unlearned: Path) -> None:
    next(t for t in at.text_input if t.label == "Base model").input(str(base))
    next(t for t in at.text_input if t.label == "Unlearned model").input(str(unlearned))
    next(b for b in at.button if b.label == "Load pair").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    wait_loaded(at)  # the pair loads in the background; the page fills in once it is there


def run(at: AppTest, attacks: list[str], items: int, steps: str = "1,2") -> None:
    at.multiselect(key="robustness_attacks").set_value(attacks)
    at.number_input(key="robustness_items").set_value(items)
    at.text_input(key="robustness_steps").set_value(steps)
    at.run()
    next(b for b in at.button if b.label == "Run attacks").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def chart_data(at: AppTest) -> dict[str, list]:
    return {chart.key: json.loads(chart.proto.spec)["data"] for chart in at.get("plotly_chart")}


def test_the_page_asks_for_a_pair_first() -> None:
    at = open_page()
    assert [t.value for t in at.title] == ["Robustness"]
    assert any("Load a model pair" in i.value for i in at.info)
    assert next(b for b in at.button if b.label == "Run attacks").disabled
    assert not at.error


def test_charts_and_table_equal_core_for_the_same_settings(tiny_dirs) -> None:
    at = open_page()
    load(at, *tiny_dirs)
    run(at, ATTACKS, items=4)
    pair = pair_state.load_pair(*at.session_state[keys.PAIR_KEY])
    settings = RobustnessSettings(max_items=4, relearn_steps=(1, 2))
    expected = run_attacks(pair, load_demo_splits(), ATTACKS, settings)
    charts = chart_data(at)
    assert charts["robustness_recovery"] == json.loads(recovery_figure(expected).to_json())["data"]
    assert charts["robustness_relearning"] == json.loads(relearning_figure(expected).to_json())["data"]
    table = next(df.value for df in at.dataframe if "recovery_pct" in df.value.columns)
    assert table["attack"].tolist() == [o.attack for o in expected.outcomes]
    assert table["attacked_unlearned"].tolist() == pytest.approx([o.attacked_unlearned for o in expected.outcomes])
    assert {b.label for b in at.get("download_button")} >= {"Download CSV", "Download JSON"}


def test_base_against_itself_says_nothing_was_forgotten(tiny_dirs) -> None:
    at = open_page()
    load(at, tiny_dirs[0], tiny_dirs[0])
    run(at, ["paraphrase"], items=3)
    assert any("nothing was forgotten to recover" in i.value for i in at.info)
    (bars,) = chart_data(at)["robustness_recovery"]
    assert bars["y"] == [None] and bars["text"] == ["n/a"]


def test_bad_relearning_steps_are_a_message(tiny_dirs) -> None:
    at = open_page()
    load(at, *tiny_dirs)
    at.text_input(key="robustness_steps").set_value("two").run()
    assert any("whole numbers" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "Run attacks"]
