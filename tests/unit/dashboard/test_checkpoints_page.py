"""The Checkpoints page through AppTest on tiny models: a base, two adapters and an unlearning run folder. What it
draws equals core.analyses.multi's direct output on the same models; a chosen model becomes the unlearned side of
the pair on every page; a set that will not fit is refused before anything loads; data strings stay escaped."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from apptest_pages import ask, button, charts, errors, load_checked_pair, loaded_pair, open_page
from tiny_models import save_tiny_adapter as save_adapter
from tiny_models import save_tiny_model_dir
from tiny_models import save_tiny_run as save_run

from core.analyses.multi import ModelEntry, ModelSet, lens_across, probe_many, run_entries
from core.analyses.probe import ProbeRequest
from core.models.spec import ModelSpec
from dashboard.plain import shown
from dashboard.state import keys

PROMPT, ANSWER = "the capital of france is", "paris w1"
HOSTILE = "<b>npo</b>"  # the run's method, as its run.json names it: shown as text, never as markup


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    base = save_tiny_model_dir(root / "base")
    return {
        "base": base,
        "a": save_adapter(base, root / "a", seed=1),
        "b": save_adapter(base, root / "b", seed=2),
        "run": save_run(base, root / "run", [3, 1, 2], method=HOSTILE),
    }


def open_checkpoints(folders: dict[str, Path]):
    at = open_page("checkpoints")
    load_checked_pair(at, folders["base"], folders["a"])
    at.text_area(key="checkpoints_specs").input(f"{folders['a']}\n{folders['b']}")
    at.text_area(key="checkpoints_runs").input(str(folders["run"])).run()
    ask(at, "checkpoints", PROMPT, ANSWER)
    at.toggle(key="checkpoints_chat").set_value(False).run()
    return at


def expected_set(folders: dict[str, Path]) -> ModelSet:
    spec = {"dtype": "auto", "device": "auto"}
    entries = [ModelEntry(ModelSpec(str(folders[n]), **spec), str(folders[n])) for n in ("a", "b")]
    entries += run_entries(folders["run"], ModelSpec("x", **spec))
    return ModelSet.load(ModelSpec(str(folders["base"]), **spec), entries)


def test_trajectory_table_and_token_map_equal_the_multi_probe(folders) -> None:
    at = open_checkpoints(folders)
    memory = [shown(c.value) for c in at.caption if "Holding the base" in shown(c.value)]
    assert memory and "Holding the base and 5 model(s): 1 backbone(s) and 5 adapter(s)" in memory[0]
    button(at, "Probe every model").click().run()
    assert not at.exception and not errors(at), errors(at)
    want = probe_many(expected_set(folders), ProbeRequest(PROMPT, ANSWER))
    values = dict(zip(want.models, want.answer_logprobs(), strict=True))
    spec = charts(at)["checkpoints_trajectory"]
    traces = {trace["name"]: trace for trace in spec["data"]}
    run = traces[html.escape(HOSTILE)]  # the run's line, its name escaped
    assert run["x"] == [1, 2, 3]
    assert run["y"] == pytest.approx([values[f"{HOSTILE}@{s}"] for s in (1, 2, 3)], abs=1e-4)
    assert [c[0] for c in run["customdata"]] == [2, 3, 4]  # the models' indices, for a click
    assert traces[html.escape(str(folders["b"]))]["y"][0] == pytest.approx(values[str(folders["b"])], abs=1e-4)
    assert traces[f"base: {html.escape(str(folders['base']))}"]["y"][0] == pytest.approx(
        want.results[0].answer_logprob_base, abs=1e-4
    )
    heat = charts(at)["checkpoints_tokens"]["data"][0]
    assert heat["z"][0] == pytest.approx([t.delta for t in want.results[2].tokens], abs=1e-4)  # run first, step 1
    table = at.dataframe[0].value
    assert table["answer_logprob"].tolist() == pytest.approx(want.answer_logprobs(), abs=1e-4)
    assert "<b>" not in " ".join(m.value for m in at.markdown)


def test_a_chosen_checkpoint_becomes_the_unlearned_side_on_every_page(folders) -> None:
    at = open_checkpoints(folders)
    button(at, "Probe every model").click().run()
    at.selectbox(key="checkpoints_pick").set_value(3).run()  # HOSTILE@2
    button(at, "Use as the unlearned model").click().run()
    assert not at.exception and not errors(at), errors(at)
    checkpoint = str(folders["run"] / "checkpoint-2")
    assert at.session_state[keys.PAIR_KEY][:2] == (str(folders["base"]), checkpoint)
    assert any("is now the unlearned model" in shown(s.value) for s in at.success)
    assert charts(at)["checkpoints_trajectory"]  # the result stays: it depends on the models, not on the pair
    at.switch_page("views/probe.py").run()
    assert loaded_pair(at).specs["unlearned"].adapter == checkpoint


def test_lens_across_checkpoints_equals_core(folders) -> None:
    at = open_checkpoints(folders)
    button(at, "Run the logit lens across checkpoints").click().run()
    assert not at.exception and not errors(at), errors(at)
    want = lens_across(expected_set(folders), PROMPT, ANSWER, chat=False)
    heat = charts(at)["checkpoints_lens_chart"]["data"][0]
    steps = [want.rank[i] for i in (2, 3, 4)]  # the run's checkpoints, by step
    rows = [[b, *r] for b, *r in zip(want.base_rank, *steps, strict=True)]  # layer × (base, steps 1..3)
    assert [v for row in heat["customdata"] for v in row] == pytest.approx([v for row in rows for v in row])
    assert any("last layer" in shown(info.value) for info in at.info)


def test_a_set_that_will_not_fit_is_refused(folders, monkeypatch) -> None:
    from core.models import loading

    at = open_page("checkpoints")
    load_checked_pair(at, folders["base"], folders["a"])
    monkeypatch.setattr(loading, "available_memory", lambda device, spread=False: 1024)
    at.text_area(key="checkpoints_runs").input(str(folders["run"])).run()
    assert any("will not fit in memory" in e for e in errors(at))
    assert not [b for b in at.button if b.label == "Probe every model"]


def test_bad_input_is_a_message(folders, tmp_path) -> None:
    at = open_page("checkpoints")
    load_checked_pair(at, folders["base"], folders["a"])
    at.text_area(key="checkpoints_runs").input(str(tmp_path / "nowhere")).run()
    assert any("run folder not found" in e for e in errors(at))
    assert not at.exception


def test_without_a_pair_the_page_asks_for_one() -> None:
    at = open_page("checkpoints")
    assert any("Load a model pair" in info.value for info in at.info)


def test_lens_reading_and_the_clicked_model_by_hand() -> None:
    """A hand-made lens: under NPO the answer's last-layer mean rank goes 3 → 8 → 40, so it leaves the top 10 at step
    3, where it still ranks 5th at layer 1 (of 2); the base line of the trajectory carries no model to click."""
    from core.analyses.multi import CheckpointLens, MultiProbeResult
    from core.analyses.probe import ProbeResult, TokenShift
    from core.present.figures.checkpoints import lens_reading, model_from_selection, trajectory_figure

    lens = CheckpointLens(
        "q", "a", False, ["a"], [0, 1, 2], ["npo@1", "npo@2", "npo@3", "oracle"], ["npo", "npo", "npo", None],
        [1, 2, 3, None], [[0.0] * 3] * 4, [[50, 2, 3], [60, 4, 8], [100, 5, 40], [90, 80, 70]], [0.0] * 3, [40, 2, 1],
    )  # fmt: skip
    assert lens_reading(lens, "npo") == (
        "At the last layer the answer's mean rank is 1.0 under the base; it first leaves the top 10 at step 3 (mean "
        "rank 40.0), where it still ranks in the top 10 at layer 1 of 2."
    )
    assert lens_reading(lens, None).endswith("it first leaves the top 10 at npo@3 (mean rank 40.0), where it still "
                                             "ranks in the top 10 at layer 1 of 2.")  # fmt: skip

    def probe(logprob: float) -> ProbeResult:
        token = TokenShift(1, "a", 3, -1.0, logprob, logprob + 1.0, 1, 1, 0.0, 0.0, 0.0)
        return ProbeResult("q", "a", False, ["q"], [token])

    result = MultiProbeResult(["npo@1", "npo@2", "oracle"], [probe(-1.5), probe(-3.0), probe(-2.0)])
    figure = trajectory_figure(result, ["npo", "npo", None], [1, 2, None], "target")
    names = [trace.name for trace in figure.data]
    assert names == ["npo", "base: target", "oracle"]
    assert list(figure.data[0].y) == [-1.5, -3.0] and list(figure.data[1].y) == [-1.0, -1.0]
    assert model_from_selection(figure, [{"curve_number": 0, "point_index": 1}]) == 1
    assert model_from_selection(figure, [{"curve_number": 1, "point_index": 0}]) is None  # the base line
    assert model_from_selection(figure, [{"curve_number": 2, "point_index": 0}]) == 2
    assert model_from_selection(figure, [{"curve_number": 9, "point_index": 0}]) is None
