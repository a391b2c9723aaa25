"""Integration: the quick demo experiment on the real SmolLM2 (tiny-model pipeline: unit/unlearn/test_demo.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from core.data.qa import DEMO_DIR
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.unlearn.demo import RECIPES, DemoExperiment

TEMPLATE = ModelSpec("demo:x", dtype="float32", device="cpu")


def answer_probability(pair: ModelPair, items) -> tuple[float, float]:
    """Mean over items of exp(mean answer-token log-prob), for the base and unlearned sides of the pair."""
    from core.analyses.probe import ProbeRequest, score

    chat = RECIPES["quick"].chat  # probed the way the demo models were taught
    results = score(pair, [ProbeRequest(i.question, i.answer) for i in items], chat=chat)

    def mean(side: str) -> float:
        values = [math.exp(sum(getattr(t, f"logprob_{side}") for t in r.tokens) / len(r.tokens)) for r in results]
        return sum(values) / len(values)

    return mean("base"), mean("unlearned")


@pytest.mark.slow
def test_quick_demo_on_smollm2(tmp_path: Path, embedded_model_dir: Path) -> None:
    """The quick experiment: the target knows the forget answers, the oracle does not, NPO forgets them while
    keeping the retain answers (numbers reached: docs/DEMO.md)."""
    experiment = DemoExperiment(RECIPES["quick"], DEMO_DIR, base_dir=embedded_model_dir, root=tmp_path)
    experiment.build(["npo", "oracle"])  # and the target they start from; graddiff and rmu run in the bench
    forget, retain = experiment.data.forget.items, experiment.data.retain.items
    pair = ModelPair.load(experiment.spec("target", TEMPLATE), experiment.spec("oracle", TEMPLATE))
    (target_forget, oracle_forget) = answer_probability(pair, forget)
    pair = ModelPair.load(experiment.spec("target", TEMPLATE), experiment.spec("unlearned", TEMPLATE))
    (_, unlearned_forget), (target_retain, unlearned_retain) = (
        answer_probability(pair, forget),
        answer_probability(pair, retain),
    )
    logging.getLogger(__name__).info(
        "quick demo: target forget %.3f retain %.3f; oracle forget %.3f; unlearned forget %.3f retain %.3f",
        target_forget,
        target_retain,
        oracle_forget,
        unlearned_forget,
        unlearned_retain,
    )
    assert target_forget >= 0.5
    assert oracle_forget < 0.5 * target_forget
    assert unlearned_forget < 0.5 * target_forget
    # Selective, not collapsed: retain falls by less than half as much as forget (the unit tier's criterion in
    # test_unlearn.py). docs/DEMO.md records a retain drop of 0.165 for a forget drop of 0.623 (ratio 0.27), so
    # training that lands differently on another CPU has room; a model that forgets everything alike does not.
    # (The former "retain within 0.2 of the target's" left 0.035 of room.)
    assert target_retain - unlearned_retain < 0.5 * (target_forget - unlearned_forget)
