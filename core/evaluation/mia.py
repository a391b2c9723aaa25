"""The membership-inference attacks (MIA_ATTACKS: LOSS, ZLib, Min-K%, Min-K%++) scored on forget and holdout, and
their AUC."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from core.common import Registry
from core.evaluation import metrics
from core.evaluation.scores import ItemScores
from core.evaluation.settings import MIA_SPLITS
from core.evaluation.split_metrics import metric_entry

MiaAttack = Callable[[ItemScores], float]
MIA_ATTACKS: Registry[MiaAttack] = Registry("MIA attack")
MIA_ATTACKS.register(lambda s: s.answer.avg_loss, name="mia_loss")
MIA_ATTACKS.register(lambda s: metrics.zlib_score(s.answer.avg_loss, s.item.answer), name="mia_zlib")
MIA_ATTACKS.register(lambda s: metrics.min_k_score(s.answer.logp), name="mia_min_k")
MIA_ATTACKS.register(
    lambda s: metrics.min_k_plus_plus_score(s.answer.logp, s.answer.mu, s.answer.sigma), name="mia_min_k_plus_plus"
)


def mia_logs(by_split: Mapping[str, list[ItemScores]]) -> dict[str, Any]:
    """Each attack's per-item scores on forget and holdout, and its AUC (forget labelled 0, holdout 1)."""
    if not all(split in by_split for split in MIA_SPLITS):
        return {}
    logs = {}
    for name, attack in MIA_ATTACKS.items():
        scores = {split: [float(attack(s)) for s in by_split[split]] for split in MIA_SPLITS}
        entries = {
            split: metric_entry(by_split[split], [{"score": v} for v in scores[split]], float(np.mean(scores[split])))
            for split in MIA_SPLITS
        }
        auc = metrics.mia_auc(scores["forget"], scores["holdout"])
        logs[name] = {**entries, "auc": auc, "agg_value": auc}
    return logs
