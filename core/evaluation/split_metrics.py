"""The per-split metrics (SPLIT_METRICS): probability, truth ratio, normalised probability, MCQ accuracy, exact
memorisation and extraction strength, as open-unlearning EVAL entries built from an item's scored rows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from core.common import Registry
from core.evaluation import metrics
from core.evaluation.scores import ItemScores, TokenScores

log = logging.getLogger(__name__)

PREFIX_BY_SPLIT = {split: prefix for prefix, split in metrics.SPLIT_BY_PREFIX.items()}


def prefixed(split: str, suffix: str) -> str:
    return f"{PREFIX_BY_SPLIT[split]}_{suffix}"


def metric_entry(items: list[ItemScores], values: list[Any], agg: float | None) -> dict[str, Any]:
    """An open-unlearning EVAL entry: the aggregate and one record per item, keyed by the item's index."""
    return {
        "agg_value": agg,
        "value_by_index": {str(s.item.index): value for s, value in zip(items, values, strict=True)},
    }


SplitMetric = Callable[[str, list[ItemScores]], dict[str, Any]]
SPLIT_METRICS: Registry[SplitMetric] = Registry("split metric")


def split_metric(name: str) -> Callable[[SplitMetric], SplitMetric]:
    """Register a builder of EVAL entries for one split's scored items (it returns {} where it does not apply)."""
    return SPLIT_METRICS.register(name=name)


def _probability_entry(items: list[ItemScores], rows: list[TokenScores]) -> dict[str, Any]:
    losses = [row.avg_loss for row in rows]
    probs = metrics.probability(losses)
    values = [{"prob": float(p), "avg_loss": loss} for p, loss in zip(probs, losses, strict=True)]
    return metric_entry(items, values, float(np.mean(probs)))


@split_metric("probability")
def _probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    return {prefixed(split, "Q_A_Prob"): _probability_entry(items, [s.answer for s in items])}


@split_metric("paraphrased_probability")
def _paraphrased_probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if not all(s.has_paraphrase for s in items):
        return {}
    return {prefixed(split, "Q_A_PARA_Prob"): _probability_entry(items, [s.paraphrased for s in items])}


def _with_perturbed(split: str, items: list[ItemScores]) -> bool:
    if all(s.perturbed for s in items):
        return True
    if any(s.perturbed for s in items):
        log.warning("%s: some items have no perturbed answers; truth ratio and MCQ are left out", split)
    return False


@split_metric("perturbed_probability")
def _perturbed_probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if not _with_perturbed(split, items):
        return {}
    losses = [[row.avg_loss for row in s.perturbed] for s in items]
    probs = [metrics.probability(row).tolist() for row in losses]
    values = [{"prob": p, "avg_loss": loss} for p, loss in zip(probs, losses, strict=True)]
    return {prefixed(split, "Q_A_PERT_Prob"): metric_entry(items, values, float(np.mean(np.concatenate(probs))))}


_TRUTH_RATIO_NAMES = {"forget": ("forget_truth_ratio", metrics.truth_ratio_forget)}
PROB_MEAN_SUFFIX = "Truth_Ratio_prob_mean"


def item_truth_ratios(items: list[ItemScores]) -> np.ndarray:
    """TOFU truth ratio per item: perturbed over paraphrased (the answer itself on world facts)."""
    return np.array(
        [metrics.truth_ratio([s.paraphrased.avg_loss], [[r.avg_loss for r in s.perturbed]])[0] for s in items]
    )


@split_metric("truth_ratio")
def _truth_ratio(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if not _with_perturbed(split, items):
        return {}
    name, aggregate = _TRUTH_RATIO_NAMES.get(split, (prefixed(split, "Truth_Ratio"), metrics.truth_ratio_retain))
    ratios = item_truth_ratios(items)
    true_share = metrics.truth_ratio_true_share(
        [s.paraphrased.avg_loss for s in items], [[r.avg_loss for r in s.perturbed] for s in items]
    )
    return {
        name: metric_entry(items, [{"score": float(r)} for r in ratios], aggregate(ratios)),
        prefixed(split, PROB_MEAN_SUFFIX): metric_entry(
            items, [{"score": float(r)} for r in true_share], metrics.truth_ratio_prob_mean(true_share)
        ),
    }


@split_metric("normalised_probability")
def _normalised_probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if split not in ("world_facts", "real_authors") or not _with_perturbed(split, items):
        return {}
    values = [
        float(metrics.normalised_probability(metrics.probability([s.answer.avg_loss]), [_wrong_probs(s)])[0])
        for s in items
    ]
    return {
        prefixed(split, "Q_A_Prob_normalised"): metric_entry(
            items, [{"prob": v} for v in values], float(np.mean(values))
        )
    }


def _wrong_probs(scores: ItemScores) -> np.ndarray:
    return metrics.probability([row.avg_loss for row in scores.perturbed])


@split_metric("mcq_accuracy")
def _mcq_accuracy(split: str, items: list[ItemScores]) -> dict[str, Any]:
    """The true answer against its wrong ones by mean token log-likelihood (answers differ in length)."""
    if split not in ("world_facts", "real_authors") or not _with_perturbed(split, items):
        return {}
    correct = [metrics.mcq_accuracy([[-s.answer.avg_loss] + [-r.avg_loss for r in s.perturbed]], [0]) for s in items]
    return {f"{split}/acc": metric_entry(items, [{"score": c} for c in correct], float(np.mean(correct)))}


@split_metric("memorisation")
def _memorisation(split: str, items: list[ItemScores]) -> dict[str, Any]:
    """Exact memorisation and extraction strength as open-unlearning computes them (its names on forget, prefixed
    elsewhere; a final EOS left out), and the textbook extraction strength (0 when the last token is wrong) under
    its own name."""
    out = {}
    for name, fn in (
        ("exact_memorization", metrics.exact_memorisation),
        ("extraction_strength", metrics.extraction_strength),
        ("extraction_strength_textbook", metrics.extraction_strength_textbook),
    ):
        rows = [s.answer.tokenwise() for s in items]
        values = [fn(row.argmax, row.labels) for row in rows]
        key = name if split == "forget" else prefixed(split, name)
        out[key] = metric_entry(items, [{"score": v} for v in values], float(np.mean(values)))
    return out
