"""The membership-inference attacks scored on forget and holdout, and their AUC: MIA_ATTACKS (LOSS, ZLib, Min-K%,
Min-K%++) from the shared forward pass; gradient norm (`gradnorm_logs`, one backward pass per item) and the
reference-model attack (`reference_logs`, the target's loss minus a reference model's) where asked for.

As open-unlearning (src/evals/metrics/mia/ @ d3d7cf9): LOSS and ZLib read every scored token (answer, end-of-turn
tokens, EOS); Min-K%, Min-K%++ and gradient norm leave out a final EOS; ZLib compresses the scored tokens' text
decoded without special tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from core.common import Registry
from core.evaluation import metrics
from core.evaluation.scores import ItemScores
from core.evaluation.settings import MIA_SPLITS

MiaAttack = Callable[[ItemScores], float]
MIA_ATTACKS: Registry[MiaAttack] = Registry("MIA attack")
MIA_ATTACKS.register(lambda s: s.answer.avg_loss, name="mia_loss")
MIA_ATTACKS.register(
    lambda s: metrics.zlib_score(s.answer.avg_loss, s.item.answer if s.answer.text is None else s.answer.text),
    name="mia_zlib",
)
MIA_ATTACKS.register(lambda s: metrics.min_k_score(s.answer.tokenwise().logp), name="mia_min_k")


def _min_k_plus_plus(s: ItemScores) -> float:
    row = s.answer.tokenwise()
    return metrics.min_k_plus_plus_score(row.logp, row.mu, row.sigma)


MIA_ATTACKS.register(_min_k_plus_plus, name="mia_min_k_plus_plus")


def auc_entry(indices: Mapping[str, list[str]], scores: Mapping[str, list[float]]) -> dict[str, Any]:
    """An attack's EVAL entry: per-item scores (keyed by item index) and their mean on forget and holdout, and the
    AUC (forget labelled 0, holdout 1)."""
    entries = {
        split: {
            "agg_value": float(np.mean(scores[split])),
            "value_by_index": {index: {"score": v} for index, v in zip(indices[split], scores[split], strict=True)},
        }
        for split in MIA_SPLITS
    }
    auc = metrics.mia_auc(scores["forget"], scores["holdout"])
    return {**entries, "auc": auc, "agg_value": auc}


def mia_logs(by_split: Mapping[str, list[ItemScores]]) -> dict[str, Any]:
    """Each attack's per-item scores on forget and holdout, and its AUC (forget labelled 0, holdout 1)."""
    if not all(split in by_split for split in MIA_SPLITS):
        return {}
    logs = {}
    for name, attack in MIA_ATTACKS.items():
        scores = {split: [float(attack(s)) for s in by_split[split]] for split in MIA_SPLITS}
        logs[name] = auc_entry({split: [str(s.item.index) for s in by_split[split]] for split in MIA_SPLITS}, scores)
    return logs


def reference_logs(logs: Mapping[str, Any], reference_losses: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """mia_reference: the target's LOSS score minus the reference model's on the same item (open-unlearning's
    ReferenceAttack), from this model's mia_loss entry and the reference's per-item losses by split."""
    loss = logs.get("mia_loss")
    if loss is None:
        return {}
    indices = {split: list(loss[split]["value_by_index"]) for split in MIA_SPLITS}
    scores = {
        split: [loss[split]["value_by_index"][i]["score"] - reference_losses[split][i] for i in indices[split]]
        for split in MIA_SPLITS
    }
    return {"mia_reference": auc_entry(indices, scores)}
