"""Deletion / insertion curves: batched masks against one forward per mask, the curves' ends against the attribution's
own end points, and the true leave-one-out ordering at least as steep as random ones."""

from __future__ import annotations

import pytest
import torch

from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.attribution.faithfulness import (
    Faithfulness,
    area,
    curves_for_orders,
    faithfulness,
    order_masks,
    ranking,
)
from core.analyses.attribution.problem import answer_logprobs, build_problem, side_inputs
from core.models.pair import ModelPair
from tests.tiny_models import TinyTokenizer, logit_tolerance, make_tiny_llama

PROMPT, ANSWER = "Ruritania's capital city", " is Strelsau."


@pytest.fixture(scope="module")
def setup():
    model = make_tiny_llama(3, layers=2)
    pair = ModelPair.from_models(model, model, TinyTokenizer())
    problem = build_problem(pair, PROMPT, ANSWER, False, AttributionSettings(baseline="eos"))
    inputs = side_inputs(model, problem, TinyTokenizer.eos_token_id)
    with torch.no_grad():
        logits = model(input_ids=problem.ids.unsqueeze(0)).logits
    return model, pair, problem, inputs, 2 * logit_tolerance(model, logits) * len(problem.answer_ids)


def _one_by_one(model, problem, inputs, mask: torch.Tensor) -> float:
    """The answer's log-prob with the features where mask is 0 replaced: one forward, built position by position."""
    embeds = inputs.context.clone()
    for f, members in enumerate(problem.feature_groups):
        if mask[f] == 0:
            embeds[members] = inputs.baseline[members]
    with torch.no_grad():
        return float(answer_logprobs(model, inputs, problem, embeds.unsqueeze(0)).sum())


def test_masks_and_area_by_hand():
    masks = order_masks([2, 0, 1], 3)
    assert masks[:4].tolist() == [[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert masks[4:].tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1]]
    assert area([0.0, 1.0, 1.0]) == pytest.approx(0.75) and area([2.0]) == 2.0
    assert ranking([0.5, 2.0, -1.0, 2.0]) == [1, 3, 0, 2]


def test_batched_curves_equal_one_forward_per_mask(setup):
    model, _, problem, inputs, tol = setup
    n = len(problem.feature_groups)
    order = list(reversed(range(n)))
    (curve,) = curves_for_orders(model, problem, inputs, [order], batch_tokens=3 * len(problem.ids))
    masks = order_masks(order, n)
    expected = [_one_by_one(model, problem, inputs, m) for m in masks]
    assert curve.deletion == pytest.approx(expected[: n + 1], abs=tol)
    assert curve.insertion == pytest.approx(expected[n + 1 :], abs=tol)
    assert curve.deletion[-1] == pytest.approx(curve.insertion[0], abs=tol)  # both: every feature replaced


def test_the_leave_one_out_order_deletes_at_least_as_steeply_as_random(setup):
    model, _, problem, inputs, tol = setup
    n = len(problem.feature_groups)
    full = _one_by_one(model, problem, inputs, torch.ones(n))
    effects = [full - _one_by_one(model, problem, inputs, 1 - torch.eye(n)[f]) for f in range(n)]
    generator = torch.Generator().manual_seed(0)
    randoms = [torch.randperm(n, generator=generator).tolist() for _ in range(16)]
    oracle, *rest = curves_for_orders(model, problem, inputs, [ranking(effects), *randoms], 4096)
    assert oracle.deletion_area <= sum(c.deletion_area for c in rest) / len(rest) + tol
    assert oracle.insertion_area >= sum(c.insertion_area for c in rest) / len(rest) - tol


def test_faithfulness_of_attribution_results(setup):
    _, pair, problem, _, tol = setup
    settings = AttributionSettings(baseline="eos", n_steps=8)
    results = [attribute(pair, PROMPT, ANSWER, m, settings=settings) for m in ("feature_ablation", "attn_lrp")]
    report = faithfulness(pair, results)
    n = len(problem.feature_groups)
    assert report.fractions == pytest.approx([k / n for k in range(n + 1)])
    for side in ("base", "unlearned"):
        assert set(report.curves[side]) == {"feature_ablation", "attn_lrp"}
        ablation = report.curves[side]["feature_ablation"]
        assert ablation.deletion[0] == pytest.approx(results[0].logprob[side][0], abs=tol)
        assert ablation.deletion[-1] == pytest.approx(results[0].baseline_logprob[side][0], abs=tol)
        assert report.best(side) in {"feature_ablation", "attn_lrp"}
    assert Faithfulness.from_json(report.to_json()) == report
