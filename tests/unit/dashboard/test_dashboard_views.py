"""The Attribution and Layers pages driven through AppTest on a tiny random model pair loaded from disk: the numbers
they draw equal core's direct output on the same pair and inputs; mistakes give an on-page message, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from apptest_pages import ask, button, charts, errors, load_pair, open_page, open_with_pair, text_input
from streamlit.testing.v1 import AppTest

from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.lens import hidden_state_drift, logit_lens, weight_change
from core.data.examples import demo_examples
from core.present.figures.layers import hidden_knowledge_reading
from dashboard.state import keys

PROMPT, ANSWER = "the capital of france is", "paris w1 w2"


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


def downloads(at: AppTest) -> dict[str, str]:
    """Download buttons by key: label."""
    return {element.key: element.label for element in at.download_button}


# ---------------------------------------------------------------------------------------------- both pages


@pytest.mark.parametrize("page", ["attribution", "layers"])
def test_page_loads_without_a_pair(page: str) -> None:
    at = open_page(page)
    assert [title.value for title in at.title] == [page.capitalize()]
    assert any("Load a model pair" in info.value for info in at.info)
    assert not errors(at)


@pytest.mark.parametrize(("page", "prefix"), [("attribution", "attribution"), ("layers", "lens")])
def test_inputs_start_from_the_probe_page_and_take_examples(page: str, prefix: str, tiny_pair_dirs) -> None:
    at = open_page(page, tiny_pair_dirs, probe_prompt="Where was Ana born?", probe_answer="Lima", probe_chat=False)
    assert at.text_area(key=f"{prefix}_prompt").value == "Where was Ana born?"
    assert at.text_input(key=f"{prefix}_answer").value == "Lima"
    assert at.toggle(key=f"{prefix}_chat").value is False  # the Probe page's setting, not the default (on)
    examples = demo_examples()
    at.selectbox(key=f"{prefix}_example").set_value(1).run()
    assert at.text_area(key=f"{prefix}_prompt").value == examples[1].question
    assert at.text_input(key=f"{prefix}_answer").value == examples[1].answer


def test_inputs_survive_page_switches_and_follow_new_probes(tiny_pair_dirs) -> None:
    """Typed on Probe → shown on Layers; edited on Layers → kept there and Probe keeps its own; a new question
    probed → taken over by Layers and Attribution (Streamlit drops unrendered widgets' values unless kept)."""
    at = open_page("probe", tiny_pair_dirs)
    at.text_area(key="probe_prompt").input("Where was Ana born?")
    at.text_input(key="probe_answer").input("Lima")
    at.number_input(key="probe_topk").set_value(7)
    at.number_input(key="probe_new").set_value(12)
    at.toggle(key="probe_sample").set_value(True).run()
    at.number_input(key="probe_seed").set_value(5).run()
    at.switch_page("views/layers.py").run()
    assert at.text_area(key="lens_prompt").value == "Where was Ana born?"
    at.text_area(key="lens_prompt").input("Who taught Ana?").run()
    at.switch_page("views/dataset.py").run()  # a page with none of these inputs
    at.switch_page("views/probe.py").run()
    assert at.text_area(key="probe_prompt").value == "Where was Ana born?"
    assert at.text_input(key="probe_answer").value == "Lima"
    settings = [at.number_input(key=key).value for key in ("probe_topk", "probe_new", "probe_seed")]
    assert settings == [7, 12, 5] and at.toggle(key="probe_sample").value is True
    at.switch_page("views/layers.py").run()
    assert at.text_area(key="lens_prompt").value == "Who taught Ana?"  # the edit made on Layers stays
    at.switch_page("views/probe.py").run()
    at.text_area(key="probe_prompt").input("Where does Ben live?")
    at.text_input(key="probe_answer").input("Oslo").run()
    for page, prefix in (("layers", "lens"), ("attribution", "attribution")):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception
        assert at.text_area(key=f"{prefix}_prompt").value == "Where does Ben live?"
        assert at.text_input(key=f"{prefix}_answer").value == "Oslo"


# ---------------------------------------------------------------------------------------------- attribution


def compute_attribution(at: AppTest, method: str, per_token: bool, n_steps: int = 4) -> None:
    ask(at, "attribution", PROMPT, ANSWER)
    at.selectbox(key="attribution_method").set_value(method).run()  # draws that method's own options
    if any(box.key == "attribution_steps" for box in at.number_input):  # integrated gradients' steps
        at.number_input(key="attribution_steps").set_value(n_steps)
    at.checkbox(key="attribution_per_token").set_value(per_token)
    at.radio(key="attribution_granularity").set_value("token")
    button(at, "Compute").click().run()
    assert not at.exception and not errors(at), errors(at)


@pytest.mark.parametrize(("method", "per_token"), [("integrated_gradients", True), ("feature_ablation", False)])
def test_attribution_draws_cores_maps(method: str, per_token: bool, tiny_pair_dirs) -> None:
    at, pair = open_with_pair("attribution", tiny_pair_dirs)
    assert at.toggle(key="attribution_chat").value is True  # not a demo pair: the chat template is on by default
    compute_attribution(at, method, per_token)
    settings = AttributionSettings(per_token=per_token, granularity="token", n_steps=4)
    direct = attribute(pair, PROMPT, ANSWER, method, chat=True, settings=settings)
    drawn = charts(at)
    rows = {trace["name"]: trace["z"][0] for trace in drawn["attribution_heatmap"]["data"]}
    for side in ("base", "unlearned", "delta"):
        expected = np.asarray(getattr(direct, side)).sum(axis=0)
        np.testing.assert_allclose(rows[side], expected, atol=1e-6, rtol=1e-6)
    ticks = drawn["attribution_heatmap"]["layout"]["xaxis3"]["ticktext"]
    assert ticks == direct.prompt_tokens == PROMPT.split()  # the prompt's words, BOS left out
    assert {"export_attribution_table_csv": "CSV", "attribution_json": "JSON"}.items() <= downloads(at).items()
    assert {"export_attribution_heatmap_png", "export_attribution_heatmap_svg"} <= downloads(at).keys()
    if per_token:
        (matrix,) = drawn["attribution_matrix"]["data"]
        np.testing.assert_allclose(matrix["z"], direct.delta, atol=1e-6, rtol=1e-6)
        assert len(matrix["z"]) == len(ANSWER.split())
        at.segmented_control(key="attribution_side").set_value("base").run()
        np.testing.assert_allclose(charts(at)["attribution_matrix"]["data"][0]["z"], direct.base, atol=1e-6)
        for metric, side in zip(at.metric, ("base", "unlearned"), strict=True):
            assert metric.label == f"Convergence delta, {side}"
            assert float(metric.value) == pytest.approx(sum(direct.convergence_delta[side]), abs=1e-3, rel=1e-2)
    else:
        assert "attribution_matrix" not in drawn and not at.metric  # no matrix, no integral


def test_attribution_result_is_kept_per_pair(tiny_pair_dirs) -> None:
    at, _ = open_with_pair("attribution", tiny_pair_dirs)
    compute_attribution(at, "input_x_gradient", per_token=False)
    key, stored = at.session_state[keys.ATTRIBUTION_RESULT]
    assert key == at.session_state[keys.PAIR_KEY] and isinstance(stored, dict)
    json.dumps(stored)  # plain data, no tensors
    load_pair(at, tiny_pair_dirs[1], tiny_pair_dirs[0])  # another pair: the old maps are not shown for it
    assert "attribution_heatmap" not in charts(at)


@pytest.mark.parametrize(
    ("answer", "baseline", "message"),
    [
        ("", "pad", "the answer is empty"),
        ("   ", "pad", "the answer is empty"),
        (ANSWER, "neutral", "no single-token space for the neutral baseline"),
    ],
)
def test_attribution_bad_input_is_a_message(answer: str, baseline: str, message: str, tiny_pair_dirs) -> None:
    at, _ = open_with_pair("attribution", tiny_pair_dirs)
    ask(at, "attribution", PROMPT, answer)
    at.selectbox(key="attribution_baseline").set_value(baseline)
    button(at, "Compute").click().run()
    assert not at.exception
    assert any(message in text for text in errors(at)), errors(at)
    assert not charts(at) and keys.ATTRIBUTION_RESULT not in at.session_state


# ---------------------------------------------------------------------------------------------- layers


def test_lens_draws_cores_ranks_and_reads_them(tiny_pair_dirs) -> None:
    at, pair = open_with_pair("layers", tiny_pair_dirs)
    ask(at, "lens", PROMPT, ANSWER)
    button(at, "Run the logit lens").click().run()
    assert not at.exception and not errors(at)
    direct = logit_lens(pair, PROMPT, ANSWER, chat=True)
    traces = charts(at)["lens_chart"]["data"]
    for side, (ranks, probs) in zip(("base", "unlearned"), (traces[:2], traces[2:]), strict=True):
        lens = getattr(direct, side)
        assert ranks["x"] == direct.layers
        assert ranks["y"] == pytest.approx(np.mean(lens.rank, axis=1).tolist())
        assert probs["y"] == pytest.approx(np.exp(np.mean(lens.logprob, axis=1)).tolist(), rel=1e-5)
    reading = hidden_knowledge_reading(direct)
    shown = [element.value for element in (*at.info, *at.warning)]
    assert reading.text in shown
    table = next(df.value for df in at.dataframe if "top_token" in df.value.columns)
    assert table["rank"].tolist() == direct.to_frame()["rank"].tolist()
    assert {"export_lens_table_csv", "export_lens_chart_png"} <= downloads(at).keys()

    at.toggle(key="lens_by_token").set_value(True).run()
    traces = charts(at)["lens_chart"]["data"]
    assert len(traces) == 2 * 2 * len(direct.answer_tokens)
    assert [traces[2 * t]["y"] for t in range(len(direct.answer_tokens))] == np.transpose(direct.base.rank).tolist()


@pytest.mark.parametrize("answer", ["", " "])
def test_lens_empty_answer_is_a_message(answer: str, tiny_pair_dirs) -> None:
    at, _ = open_with_pair("layers", tiny_pair_dirs)
    ask(at, "lens", PROMPT, answer)
    button(at, "Run the logit lens").click().run()
    assert not at.exception
    assert any("the answer is empty" in text for text in errors(at))
    assert "lens_chart" not in charts(at)


def test_drift_on_the_demo_sets_equals_core(tiny_pair_dirs) -> None:
    at, pair = open_with_pair("layers", tiny_pair_dirs)
    at.number_input(key="drift_limit").set_value(2)
    button(at, "Compute drift").click().run()
    assert not at.exception and not errors(at)
    examples = demo_examples()
    sets = {name: [(e.question, e.answer) for e in examples if e.split == name][:2] for name in ("forget", "retain")}
    direct = hidden_state_drift(pair, sets, chat=True)
    traces = charts(at)["drift_chart"]["data"]
    for i, (name, drift) in enumerate(direct.sets.items()):
        assert traces[3 * i]["name"] == f"{name} (2 items)"
        for j, panel in enumerate(("cosine", "norm_change", "distance")):
            assert traces[3 * i + j]["y"] == pytest.approx(getattr(drift, panel), abs=1e-6)
    table = next(df.value for df in at.dataframe if "cosine" in df.value.columns)
    assert table["cosine"].tolist() == pytest.approx(direct.to_frame()["cosine"].tolist(), abs=1e-6)


def test_drift_from_a_file_and_a_missing_file(tmp_path: Path, tiny_pair_dirs) -> None:
    forget = tmp_path / "forget.jsonl"
    forget.write_text('{"question": "w1 w2 of", "answer": "paris"}\n{"question": "is w3", "answer": "the w4"}\n')
    at, pair = open_with_pair("layers", tiny_pair_dirs)
    text_input(at, "Forget set file (empty: the demo forget set)").input(str(forget))
    at.number_input(key="drift_limit").set_value(1)
    button(at, "Compute drift").click().run()
    assert not at.exception and not errors(at)
    retain = [(e.question, e.answer) for e in demo_examples() if e.split == "retain"][:1]
    direct = hidden_state_drift(pair, {"forget": [("w1 w2 of", "paris")], "retain": retain}, chat=True)
    cosine = charts(at)["drift_chart"]["data"][0]["y"]
    assert cosine == pytest.approx(direct.sets["forget"].cosine, abs=1e-6)

    text_input(at, "Forget set file (empty: the demo forget set)").input(str(tmp_path / "missing.jsonl"))
    button(at, "Compute drift").click().run()
    assert not at.exception
    assert errors(at) == [f"{tmp_path / 'missing.jsonl'}: no such file or folder"]
    assert "drift_chart" not in charts(at)


def test_weight_map_equals_core(tiny_pair_dirs) -> None:
    at, pair = open_with_pair("layers", tiny_pair_dirs)
    button(at, "Compute weight change").click().run()
    assert not at.exception and not errors(at)
    (trace,) = charts(at)["weights_chart"]["data"]
    modules = charts(at)["weights_chart"]["layout"]["yaxis"]["ticktext"]
    changes = weight_change(pair).changes
    for change in changes:
        column = "other" if change.layer is None else str(change.layer)
        assert trace["z"][modules.index(change.module)][trace["x"].index(column)] == pytest.approx(
            change.relative_change, rel=1e-9
        )
    down = {}
    for side in ("base", "unlearned"):
        with pair.use(side) as model:
            down[side] = model.model.layers[1].mlp.down_proj.weight.detach().double()
    direct = ((down["unlearned"] - down["base"]).norm() / down["base"].norm()).item()
    assert trace["z"][modules.index("mlp.down_proj.weight")][trace["x"].index("1")] == pytest.approx(direct, rel=1e-9)
    table = next(df.value for df in at.dataframe if "relative_change" in df.value.columns)
    assert sorted(table["name"]) == sorted(c.name for c in changes)
    assert table["relative_change"].is_monotonic_decreasing
