"""Never a silent junk map: the completeness check against hand-made results, and the Attribution page (AppTest on a
tiny random pair) warning next to a map that does not add up, and drawing every method's faithfulness curves as core
computes them."""

from __future__ import annotations

import pytest
from apptest_pages import ask, button, charts, errors, open_with_pair

from core.analyses.attribution import AttributionResult, AttributionSettings, attribute
from core.analyses.attribution.faithfulness import compare_methods
from core.present.figures.attribution import CONVERGENCE_SHARE, completeness, completeness_warning

PROMPT, ANSWER = "the capital of france is", "paris w1 w2"


def _result(method: str, delta: float, logprob: float, baseline: float) -> AttributionResult:
    sides = ("base", "unlearned")
    return AttributionResult(
        method=method, prompt="q", answer="a", chat=False, settings=AttributionSettings(n_steps=32),
        prompt_tokens=["q"], answer_tokens=["a"], base=[[0.0]], unlearned=[[0.0]], delta=[[0.0]],
        logprob={s: [logprob] for s in sides}, baseline_logprob={s: [baseline] for s in sides},
        convergence_delta={"base": [0.001], "unlearned": [delta]},
    )  # fmt: skip


def test_completeness_against_hand_made_results():
    # the example: the unlearned IG map's delta −156 nats against a change of −40
    junk = _result("integrated_gradients", -156.0, -45.0, -5.0)
    base, unlearned = completeness(junk)
    assert base.adds_up and not unlearned.adds_up
    assert unlearned.explained == -40.0 and unlearned.share == pytest.approx(156 / 40)
    warning = completeness_warning(junk)
    assert "unlearned model's map" in warning and "base model's map" not in warning
    assert "raise the IG steps (now 32)" in warning and "another baseline" in warning and "390%" in warning
    at_edge = _result("integrated_gradients", -40.0 * CONVERGENCE_SHARE, -45.0, -5.0)
    assert completeness_warning(at_edge) is None  # exactly at the share: adds up
    assert completeness_warning(_result("integrated_gradients", -2.01, -45.0, -5.0)) is not None
    ablation = _result("feature_ablation", 0.0, -45.0, -5.0)
    ablation.convergence_delta = None
    assert completeness(ablation) == [] and completeness_warning(ablation) is None


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


def test_the_page_warns_next_to_a_map_that_does_not_add_up(tiny_pair_dirs) -> None:
    at, pair = open_with_pair("attribution", tiny_pair_dirs)
    ask(at, "attribution", PROMPT, ANSWER)
    at.selectbox(key="attribution_method").set_value("integrated_gradients").run()
    at.number_input(key="attribution_steps").set_value(1)
    at.selectbox(key="attribution_baseline").set_value("zero")
    at.radio(key="attribution_granularity").set_value("token")
    button(at, "Compute").click().run()
    assert not at.exception and not errors(at), errors(at)
    direct = attribute(pair, PROMPT, ANSWER, chat=True, settings=AttributionSettings(n_steps=1, baseline="zero"))
    expected = completeness_warning(direct)
    warnings = [w.value.replace("\\", "") for w in at.warning]
    assert (expected is None and not warnings) or expected in warnings
    at.selectbox(key="attribution_method").set_value("attn_lrp").run()
    at.selectbox(key="attribution_lrp_rule").set_value("cp")
    button(at, "Compute").click().run()
    assert not at.exception and not errors(at) and not at.warning  # CP-LRP conserves: no warning


def test_the_page_draws_every_methods_faithfulness(tiny_pair_dirs) -> None:
    at, pair = open_with_pair("attribution", tiny_pair_dirs)
    assert at.selectbox(key="attribution_method").value == "feature_ablation"  # the page's default
    ask(at, "attribution", PROMPT, ANSWER)
    at.radio(key="attribution_granularity").set_value("token")
    button(at, "Compare every method").click().run()
    assert not at.exception and not errors(at), errors(at)
    settings = AttributionSettings(granularity="token", baseline=at.selectbox(key="attribution_baseline").value)
    _, report = compare_methods(pair, PROMPT, ANSWER, True, settings)
    traces = {t["legendgroup"]: t for t in charts(at)["attribution_faithfulness"]["data"] if t["showlegend"]}
    for method, curve in report.curves["unlearned"].items():
        assert traces[method]["y"] == pytest.approx(curve.deletion, abs=1e-5)
    table = next(df.value for df in at.dataframe if "between" in df.value.columns)
    assert len(table) == 2 * (len(report.curves["base"]) + 1)
