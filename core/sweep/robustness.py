"""`robustness --ray`: each attack on the pair is one Ray task; their outcomes are gathered into one
RobustnessResult, the one a single-process run gives (every attack is seeded on its own, so running it alone or
after the others gives the same numbers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.attacks.base import RobustnessSettings, available_attacks
from core.attacks.runner import RobustnessResult, check_attacks, run_attacks
from core.common.cache import content_hash
from core.common.errors import UserError
from core.data.qa import SplitData
from core.evaluation.candidates import dataset_hash
from core.models.pair import ModelPair
from core.models.spec import ModelSpec, resolve_spec
from core.sweep.backend import Task, run_tasks
from core.sweep.cluster import ClusterSettings
from core.sweep.specs import run_device, spec_fingerprint, task_memory

RESULT_VERSION = "1"  # bump when an attack's numbers change meaning: stored outcomes are then recomputed
ATTACK_COPIES = 2.0  # the pair's weights, and a merged copy (quantisation, relearning) beside them


@dataclass(frozen=True)
class PairInputs:
    """The pair every task loads (resolved on the driver, each with the device its task uses)."""

    base: ModelSpec
    unlearned: ModelSpec
    memory_check: bool | None = None


def robustness_work(attack: str, shared: tuple[PairInputs, SplitData, RobustnessSettings], report: Any) -> dict:
    """One attack on the pair (runs in a Ray worker): load the pair, run the attack, its result as a dict."""
    pair_inputs, data, settings = shared
    pair = ModelPair.load(pair_inputs.base, pair_inputs.unlearned, memory_check=pair_inputs.memory_check)
    result = run_attacks(pair, data, [attack], settings, progress=lambda fraction, message: report(fraction))
    return result.to_dict()


def merge_results(parts: Sequence[RobustnessResult]) -> RobustnessResult:
    """One result from single-attack results on the same pair and data: outcomes and timings in attack order."""
    if not parts:
        raise UserError("no attack finished")
    outcomes = [outcome for part in parts for outcome in part.outcomes]
    seconds = {name: value for part in parts for name, value in part.seconds.items()}
    return dataclasses.replace(parts[0], outcomes=outcomes, seconds=seconds)


def robustness_sweep(
    pair: PairInputs,
    data: SplitData,
    attacks: Sequence[str] | None,
    settings: RobustnessSettings,
    out_dir: Path,
    cluster: ClusterSettings,
    show: bool = True,
    recompute: bool = False,
) -> tuple[RobustnessResult | None, list[tuple[str, str]]]:
    """Every attack as a Ray task; (the merged result of those that finished, [(attack, reason) for the others])."""
    names = check_attacks(attacks if attacks is not None else available_attacks())
    specs = {
        side: dataclasses.replace(resolve_spec(spec), device=run_device(spec, cluster.gpus))
        for side, spec in (("base", pair.base), ("unlearned", pair.unlearned))
    }
    pair = dataclasses.replace(pair, **specs)
    identity = [spec_fingerprint(spec) for spec in specs.values()]
    fields = {**dataclasses.asdict(settings), "relearn_steps": list(settings.relearn_steps)}
    memory = task_memory(list(specs.values()), copies=ATTACK_COPIES)
    tasks = [
        Task(content_hash("robustness", RESULT_VERSION, name, identity, dataset_hash(data), fields), name, name, memory)
        for name in names
    ]
    outcomes = run_tasks(tasks, robustness_work, (pair, data, settings), out_dir, cluster, "robustness", show=show,
                         recompute=recompute)  # fmt: skip
    parts = [RobustnessResult.from_dict(o.result) for o in outcomes if o.state != "failed"]
    failures = [(o.task.label, o.error or "failed") for o in outcomes if o.state == "failed"]
    return (merge_results(parts) if parts else None), failures
