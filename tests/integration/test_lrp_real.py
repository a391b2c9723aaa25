"""Integration: AttnLRP's conservation on the demo pair (the quick recipe's target vs its NPO run, built in the cache
unless there), first forget example: CP-LRP adds up to the explained logit within the float32 bound, and AttnLRP
misses it by exactly the relevance its softmax rule keeps in the Taylor bias (docs/CAUSAL.md has the figures)."""

from __future__ import annotations

import logging

import pytest
import torch
from lrp_reference import softmax_bias_relevance
from tiny_models import EPS32

from core.analyses.attribution import AttributionSettings
from core.analyses.attribution.methods.lrp import relevance
from core.analyses.attribution.problem import build_problem, side_inputs
from core.models.pair import SIDES, ModelPair
from core.models.spec import ModelSpec


@pytest.fixture(scope="module")
def demo_pair_and_example():
    from core.unlearn.demo import DEFAULT_UNLEARNED, QUICK_ENV, RECIPES, TARGET, DemoExperiment

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(QUICK_ENV, "1")
        experiment = DemoExperiment(RECIPES["quick"])
        experiment.build([TARGET, DEFAULT_UNLEARNED])
        template = ModelSpec("demo:x", dtype="float32", device="cpu")
        pair = ModelPair.load(experiment.spec(TARGET, template), experiment.spec(DEFAULT_UNLEARNED, template))
    item = experiment.data.forget.items[0]
    return pair, item.question, item.answer


def _bound(model, explained: float) -> float:
    """The float32 bound of tiny_models.logit_tolerance on the explained number: L layers of sums over at most
    W = max(hidden, intermediate) terms, each reordering within W·eps32 of its scale, twice (two computations)."""
    config = model.config
    return 2 * config.num_hidden_layers * max(config.hidden_size, config.intermediate_size) * EPS32 * abs(explained)


def test_demo_pair_lrp_conservation(demo_pair_and_example):
    pair, question, answer = demo_pair_and_example
    problem = build_problem(pair, question, answer, False, AttributionSettings())
    n = len(problem.answer_ids)
    for side in SIDES:
        with pair.use(side) as model:
            inputs = side_inputs(model, problem, None)
            (cp, logit) = relevance(model, inputs, problem, "cp")
            (attn, _) = relevance(model, inputs, problem, "attnlrp")
            total, explained, kept = softmax_bias_relevance(
                model, inputs.full, lambda logits: logits[-n:].gather(-1, problem.answer_ids.view(n, 1)).sum()
            )
            bound = _bound(model, float(logit[0]))
        logit, cp_sum, attn_sum = float(logit[0]), float(cp.sum()), float(attn.sum())
        logging.getLogger(__name__).info(
            "%s: logit %.2f; CP-LRP Σ %.2f (gap %.2e); AttnLRP Σ %.2f (gap %.2f, %.1f%%), softmax bias keeps %.2f; "
            "bound %.3f",
            side, logit, cp_sum, cp_sum - logit, attn_sum, attn_sum - logit, 100 * (attn_sum - logit) / logit, kept,
            bound,
        )  # fmt: skip
        assert explained == pytest.approx(logit, abs=bound)
        assert cp_sum == pytest.approx(logit, abs=bound)  # CP-LRP adds up
        assert total == pytest.approx(attn_sum, abs=bound)  # the eager pass gives the method's own map
        assert attn_sum == pytest.approx(logit - kept, abs=bound)  # AttnLRP's whole gap: the softmax rule's bias
        assert torch.isfinite(attn).all()
