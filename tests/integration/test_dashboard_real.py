"""Integration: the Dataset, Attribution and Layers pages through AppTest on the embedded SmolLM2 loaded on both
sides, against core's direct output on the same model (the tiny-model pages: tests/unit/dashboard/)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from apptest_pages import ask, button, charts, errors, load_checked_pair, loaded_pair, open_page, open_with_pair

from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.lens import logit_lens
from core.analyses.probe import ProbeRequest, score
from core.data.examples import demo_examples
from core.data.qa import load_demo_splits
from core.present.figures.layers import hidden_knowledge_reading


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


def test_dataset_scores_demo_forget_items_with_the_embedded_model(embedded_model_dir: Path) -> None:
    at = open_page("dataset")
    load_checked_pair(at, embedded_model_dir, embedded_model_dir)
    at.number_input(key="dataset_limit").set_value(2)
    button(at, "Compute per-item metrics").click().run()
    assert not at.exception and not errors(at)
    table = next(df for df in at.dataframe if df.key == "dataset_table").value
    forget = load_demo_splits().forget.items[:2]
    direct = score(loaded_pair(at), [ProbeRequest(item.question, item.answer) for item in forget], chat=True)
    assert table["delta"].tolist() == [0.0, 0.0]  # one model on both sides: exactly no shift
    expected = [math.exp(np.mean([t.logprob_base for t in result.tokens])) for result in direct]
    assert table["prob_base"].tolist() == pytest.approx(expected, rel=1e-4)
    assert table["truth_ratio_base"].notna().all()


def test_views_of_the_embedded_model_against_itself(embedded_model_dir: Path) -> None:
    """One SmolLM2 on both sides: the pages show core's maps and ranks, with exactly no Δ and no weight change."""
    at, pair = open_with_pair("attribution", (embedded_model_dir, embedded_model_dir))
    question = next(e for e in demo_examples() if e.split == "forget")
    answer = question.answer.split()[0]
    ask(at, "attribution", question.question, answer)
    at.selectbox(key="attribution_method").set_value("integrated_gradients").run()  # draws IG's own options
    at.number_input(key="attribution_steps").set_value(4)
    button(at, "Compute").click().run()
    assert not at.exception and not errors(at), errors(at)
    baseline = at.selectbox(key="attribution_baseline").value  # the page's default (settings.default_baseline)
    settings = AttributionSettings(granularity="word", n_steps=4, baseline=baseline)
    direct = attribute(pair, question.question, answer, chat=True, settings=settings)
    rows = {trace["name"]: trace["z"][0] for trace in charts(at)["attribution_heatmap"]["data"]}
    assert rows["delta"] == [0.0] * len(direct.prompt_tokens)
    limit = 1e-3 * max(abs(v) for v in direct.base[0])  # fp32 sums in another thread (docs/PERFORMANCE-attribution.md)
    np.testing.assert_allclose(rows["base"], direct.base[0], atol=limit, rtol=0)

    at.switch_page("views/layers.py").run()
    ask(at, "lens", question.question, answer)
    button(at, "Run the logit lens").click().run()
    button(at, "Compute weight change").click().run()
    assert not at.exception and not errors(at), errors(at)
    lens = logit_lens(pair, question.question, answer, chat=True)
    traces = charts(at)["lens_chart"]["data"]
    assert traces[0]["y"] == traces[2]["y"] == pytest.approx(np.mean(lens.base.rank, axis=1).tolist())
    assert hidden_knowledge_reading(lens).text in [element.value for element in (*at.info, *at.warning)]
    (weights,) = charts(at)["weights_chart"]["data"]
    assert {value for row in weights["z"] for value in row} <= {0.0, None}
