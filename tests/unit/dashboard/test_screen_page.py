"""The Screen page through AppTest: result folders in open-unlearning's layout (a model folder with evals/, a run
with checkpoint-N/evals/), one row per run with the numbers written, a sparkline of the run's trajectory, and two
picked rows loaded as the pair of every page."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_pages import button, errors, loaded_pair, open_page
from tiny_models import save_tiny_model_dir

from core.evaluation.results import EXAMPLE_RESULTS
from core.evaluation.writer import write_open_unlearning
from dashboard.plain import shown
from dashboard.state import keys
from tests.unit.analyses.test_multi import save_adapter

TARGET = {"forget_Q_A_Prob": 0.9, "retain_Q_A_Prob": 0.85, "model_utility": 0.6}
RUN = {  # step → metrics: forgetting as it goes, keeping most of the rest
    1: {"forget_Q_A_Prob": 0.7, "retain_Q_A_Prob": 0.8, "model_utility": 0.58},
    2: {"forget_Q_A_Prob": 0.4, "retain_Q_A_Prob": 0.78, "model_utility": 0.55},
    3: {"forget_Q_A_Prob": 0.2, "retain_Q_A_Prob": 0.75, "model_utility": 0.5},
}


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("screen") / "results"
    target = save_tiny_model_dir(root / "target_model")
    write_open_unlearning(TARGET, target / "evals")
    run = root / "npo_run"
    for step, metrics in RUN.items():
        checkpoint = save_adapter(target, run / f"checkpoint-{step}", seed=step)
        write_open_unlearning(metrics, checkpoint / "evals")
    return {"root": root, "target": target, "run": run}


def open_screen(paths: list[Path]):
    at = open_page("screen")
    at.text_area(key="screen_paths").input("\n".join(str(p) for p in paths))
    button(at, "Load results").click().run()
    assert not at.exception and not errors(at), errors(at)
    return at


def by_source(table, folder: Path) -> list[dict]:
    return [row for row in table.to_dict("records") if Path(row["source"]).is_relative_to(folder)]


def test_one_row_per_run_with_the_written_numbers_and_its_trajectory(results) -> None:
    at = open_screen([results["root"]])
    assert at.selectbox(key="screen_dataset").value == "TOFU"
    assert at.multiselect(key="screen_metrics_TOFU").value == ["forget_Q_A_Prob", "retain_Q_A_Prob", "model_utility"]
    table = at.dataframe[0].value
    assert len(table) == 2
    (target,) = by_source(table, results["target"])
    (run,) = by_source(table, results["run"])
    assert {m: target[m] for m in TARGET} == pytest.approx(TARGET)
    assert {m: run[m] for m in RUN[3]} == pytest.approx(RUN[3]) and run["step"] == 3 and run["checkpoints"] == 3
    assert list(run["trajectory"]) == pytest.approx([RUN[s]["forget_Q_A_Prob"] for s in (1, 2, 3)])
    at.selectbox(key="screen_trend_TOFU").set_value("model_utility").run()
    (run,) = by_source(at.dataframe[0].value, results["run"])
    assert list(run["trajectory"]) == pytest.approx([RUN[s]["model_utility"] for s in (1, 2, 3)])
    at.toggle(key="screen_every").set_value(True).run()
    rows = by_source(at.dataframe[0].value, results["run"])
    assert [(r["step"], r["retain_Q_A_Prob"]) for r in rows] == [(s, RUN[s]["retain_Q_A_Prob"]) for s in (1, 2, 3)]


def test_two_picked_rows_become_the_pair_on_every_page(results) -> None:
    at = open_screen([results["root"]])
    sources = [Path(source) for source in at.dataframe[0].value["source"]]
    picked = [next(i for i, s in enumerate(sources) if s.is_relative_to(results[n])) for n in ("target", "run")]
    at.session_state["screen_table"] = {"selection": {"rows": picked, "columns": []}}
    at.run()
    checkpoint = results["run"] / "checkpoint-3"
    assert at.text_input(key="screen_base").value == str(results["target"])
    assert at.text_input(key="screen_unlearned").value == str(checkpoint)
    button(at, "Contrast these two").click().run()
    assert not at.exception and not errors(at), errors(at)
    assert at.session_state[keys.PAIR_KEY][:2] == (str(results["target"]), str(checkpoint))
    assert any("Now contrasting" in shown(s.value) for s in at.success)
    assert loaded_pair(at).specs["unlearned"].adapter == str(checkpoint)


def test_each_data_set_has_its_own_metrics(results) -> None:
    at = open_screen([results["root"], EXAMPLE_RESULTS])
    assert set(at.selectbox(key="screen_dataset").options) == {"TOFU", "MUSE"}
    at.selectbox(key="screen_dataset").set_value("MUSE").run()
    assert at.multiselect(key="screen_metrics_MUSE").value == ["forget_knowmem_ROUGE", "retain_knowmem_ROUGE"]
    assert {row["method"] for row in at.dataframe[0].value.to_dict("records")} == {"oracle", "target"}


def test_rows_the_results_do_not_locate_ask_for_a_spec(results) -> None:
    at = open_screen([EXAMPLE_RESULTS])
    at.session_state["screen_table"] = {"selection": {"rows": [0, 1], "columns": []}}
    at.run()
    assert at.text_input(key="screen_base").value == ""
    assert any("type its spec" in shown(c.value) for c in at.caption)
    assert next(b for b in at.button if b.label == "Contrast these two").disabled


def test_without_results_and_with_a_bad_folder(tmp_path) -> None:
    at = open_page("screen")
    assert any("Load result folders" in shown(i.value) for i in at.info)
    at.text_area(key="screen_paths").input(str(tmp_path / "nowhere"))
    button(at, "Load results").click().run()
    assert errors(at) and not at.exception
