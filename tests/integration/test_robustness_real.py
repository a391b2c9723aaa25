"""Robustness attacks on the real SmolLM2: the quick demo experiment's target against a short GradAscent run from it
(figures recorded in docs/ROBUSTNESS.md).

The target and the GradAscent run are stages of the quick demo experiment with its base folder given explicitly
(as tests/test_evaluate_real.py does), built into the normal cache home — not a temporary one — so a second run
reuses them instead of training again."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.attacks.base import NOTHING_FORGOTTEN, RobustnessSettings, available_attacks
from core.attacks.runner import run_attacks
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.scoring.templates import default_for_specs
from core.unlearn.demo import QUICK_ENV, RECIPES, TARGET, DemoExperiment, Stage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
log = logging.getLogger(__name__)

TEMPLATE = ModelSpec("demo:x", dtype="float32", device="cpu")
GRADASCENT = Stage("gradascent", "gradascent", TARGET, steps=4, lr=1e-3)
# the base is not attacked here (half the forward passes); docs/ROBUSTNESS.md has the figures with it. The pair is
# scored in its own format, as `python -m core robustness` and the evaluation score it (default_for_specs: plain for
# the demo models; under the chat template the end-of-turn rows, which they never learned, pull the target below 0.5)
SETTINGS = RobustnessSettings(
    chat=default_for_specs([TEMPLATE.source]),
    relearn_items=2,
    relearn_steps=(2, 4, 8),
    relearn_lr=1e-3,
    attack_base=False,
)


@pytest.fixture(scope="module")
def experiment(embedded_model_dir: Path) -> Iterator[DemoExperiment]:
    """The quick demo's target and a GradAscent run from it (4 LoRA steps on the 6 forget items), cached."""
    quick = RECIPES["quick"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(QUICK_ENV, "1")
        built = DemoExperiment(replace(quick, stages=(*quick.stages, GRADASCENT)), base_dir=embedded_model_dir)
        built.build([TARGET, GRADASCENT.name])
        yield built


@pytest.fixture(scope="module")
def pair(experiment: DemoExperiment) -> ModelPair:
    return ModelPair.load(experiment.spec(TARGET, TEMPLATE), experiment.spec(GRADASCENT.name, TEMPLATE))


def test_every_attack_reports_a_recovery_and_relearning_recovers(experiment, pair) -> None:
    result = run_attacks(pair, experiment.data, available_attacks(), SETTINGS)
    assert result.note is None and result.base > 0.5 and result.unlearned < 0.5 * result.base
    for row in result.headlines():
        assert row.recovery_pct is not None and math.isfinite(row.recovery_pct), (row.attack, row.reason)
        log.info(
            "%-14s %-22s recovery %7.1f%%  attacked %.4f (unlearned %.4f, base %.4f; base attacked %s)",
            row.attack, row.variant, row.recovery_pct, row.attacked_unlearned, row.reference_unlearned,
            row.reference_base, "-" if row.attacked_base is None else f"{row.attacked_base:.4f}",
        )  # fmt: skip
    assert {row.attack for row in result.headlines()} == set(available_attacks())
    curve = result.relearning()
    log.info("relearning curve: %s", [(o.step, round(o.attacked_unlearned, 4), o.recovery_pct) for o in curve])
    log.info("seconds per attack: %s", result.seconds)
    assert [o.step for o in curve] == [0, 2, 4, 8]
    assert curve[0].recovery_pct == pytest.approx(0.0, abs=1.0)  # step 0 is the unlearned model's merged copy
    assert curve[-1].recovery_pct > 10.0
    assert curve[-1].attacked_unlearned > curve[0].attacked_unlearned


def test_target_against_itself_has_nothing_to_recover(experiment) -> None:
    spec = experiment.spec(TARGET, TEMPLATE)
    same = ModelPair.load(spec, spec)
    result = run_attacks(same, experiment.data, ["paraphrase"], SETTINGS)
    assert result.note.startswith(NOTHING_FORGOTTEN)
    assert all(o.recovery_pct is None and o.reason.startswith(NOTHING_FORGOTTEN) for o in result.outcomes)
