"""Metrics that need more than one model or every split: forget quality and privleak (against the oracle's
numbers, OracleReference) and model utility."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from core.common.errors import UserError
from core.evaluation import metrics
from core.evaluation.ingest import forget_truth_ratios, ingest
from core.evaluation.tables import rows_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OracleReference:
    """What forget quality and privleak compare against: the oracle's forget truth ratios and Min-K% AUC."""

    name: str
    truth_ratios: np.ndarray | None
    min_k_auc: float | None


def _logs_truth_ratios(logs: Mapping[str, Any]) -> np.ndarray | None:
    entry = logs.get("forget_truth_ratio")
    return None if entry is None else np.array([record["score"] for record in entry["value_by_index"].values()])


def logs_reference(name: str, logs: Mapping[str, Any]) -> OracleReference:
    auc = logs.get("mia_min_k", {}).get("auc")
    return OracleReference(name, _logs_truth_ratios(logs), auc)


def folder_reference(folder: Path) -> OracleReference:
    """The oracle's numbers from a results folder (open-unlearning or legacy layout; its final evaluation)."""
    result = ingest([folder])
    runs = result.runs()
    if runs.empty:
        raise UserError(f"oracle folder {folder} holds no evaluation")
    final = runs.assign(order=runs["step"].astype("Float64").fillna(math.inf)).sort_values("order").iloc[-1]
    step = None if pd.isna(final["step"]) else int(final["step"])
    ratios = forget_truth_ratios(result.items, final["model"], step)
    summary = result.summary
    rows = rows_at(summary, final["model"], step)
    rows = rows[rows["metric"] == "mia_min_k/auc"]
    auc = float(rows["value"].iloc[0]) if not rows.empty else None
    return OracleReference(f"{final['model']} ({folder})", ratios, auc)


def _forget_quality(logs: Mapping[str, Any], reference: OracleReference | None) -> float | None:
    ratios = _logs_truth_ratios(logs)
    if ratios is None or reference is None or reference.truth_ratios is None:
        return None
    if ratios.size != reference.truth_ratios.size:
        log.warning(
            "%d forget items vs the oracle's %d: forget quality not computed", ratios.size, reference.truth_ratios.size
        )
        return None
    return metrics.forget_quality(ratios, reference.truth_ratios)


def model_utility_of(logs: Mapping[str, Any]) -> float | None:
    """The harmonic mean of the TOFU model-utility components present (ROUGE only with generation)."""
    values = [logs[name]["agg_value"] for name in metrics.MODEL_UTILITY_COMPONENTS if name in logs]
    if not values:
        return None
    return 0.0 if min(values) <= 0 else float(stats.hmean(values))


def utility_logs(logs: Mapping[str, Any]) -> dict[str, Any]:
    """`model_utility` (open-unlearning's hm_aggregate) when all nine components are present; otherwise the
    harmonic mean of those present as `model_utility_partial`."""
    present = [name for name in metrics.MODEL_UTILITY_COMPONENTS if name in logs]
    if len(present) == len(metrics.MODEL_UTILITY_COMPONENTS):
        return {"model_utility": {"agg_value": model_utility_of(logs)}}
    if not present:
        return {}
    return {metrics.PARTIAL_MODEL_UTILITY: {"agg_value": model_utility_of(logs)}}


def derived_logs(logs: Mapping[str, Any], reference: OracleReference | None) -> dict[str, Any]:
    """forget_quality (null without an oracle), model utility (full or partial), and privleak (vs the oracle's AUC,
    else 0.5)."""
    out: dict[str, Any] = utility_logs(logs)
    if "forget_truth_ratio" in logs:
        out["forget_quality"] = {"agg_value": _forget_quality(logs, reference)}
    if "mia_min_k" in logs:
        known = reference.min_k_auc if reference else None
        auc = metrics.PRIVLEAK_DEFAULT_REFERENCE_AUC if known is None else known
        out["privleak"] = {"agg_value": metrics.privleak(logs["mia_min_k"]["auc"], auc)}
    return out
