"""The numbers read off the patching curves: per-layer recovery and erasure ratios and the per-item depth score,
with and without an oracle (definitions and their derivation: docs/CAUSAL.md).

All quantities are the answer's mean token log-prob m (nats per token) under a model, or under a model whose
residual stream after layer l was replaced by another's: m_B (base), m_U (unlearned), m_O (oracle), f(l) = m[U ← B_l]
(the unlearned model run on the base's stream from layer l), r(l) = m[B ← U_l] and o(l) = m[B ← O_l].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GAP_FLOOR = math.log(2)  # nats per token: a base–unlearned gap below a factor 2 in probability is not located


def _tensor(values: Sequence[float]) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64)


def recovery_ratio(forward: Sequence[float], base: float, unlearned: float) -> list[float]:
    """ρ(l) = (f(l) − m_U) / max(m_B − m_U, GAP_FLOOR), clipped to [0, 1]: the share of the base–unlearned gap that
    putting the base's stream back at layer l restores in the unlearned model."""
    gap = max(base - unlearned, GAP_FLOOR)
    return ((_tensor(forward) - unlearned) / gap).clamp(0, 1).tolist()


def erasure_ratio(reverse: Sequence[float], base: float, unlearned: float) -> list[float]:
    """ε(l) = (m_B − r(l)) / max(m_B − m_U, GAP_FLOOR), clipped to [0, 1]: the share of the base–unlearned gap
    that the unlearned model's stream after layer l already carries (read by the base model's later layers)."""
    gap = max(base - unlearned, GAP_FLOOR)
    return ((base - _tensor(reverse)) / gap).clamp(0, 1).tolist()


def depth_score(erasure: Sequence[float]) -> float:
    """D = mean over decoder layers l = 1 … L of ε(l) (layer 0, the embeddings, excluded), in [0, 1]: 1 when the
    erasure is carried from the first block on, 1/L when only the last block carries it, 0 when nothing is
    erased."""
    values = _tensor(erasure)[1:]
    return float(values.mean()) if len(values) else 0.0


def oracle_depth_score(reverse: Sequence[float], oracle_reverse: Sequence[float], base: float) -> float | None:
    """The two-stage score with an oracle. Stage 1: κ(l) = m_B − o(l), how much of the target–oracle gap the
    oracle's stream after layer l carries; the layers S = {l ≥ 1 : κ(l) ≥ GAP_FLOOR} are where the knowledge is.
    Stage 2: UDS = Σ_S clip(m_B − r(l), 0, κ(l)) / Σ_S κ(l), in [0, 1]: how much of that gap the unlearned model's
    stream carries at those layers. None when no layer carries a gap (the oracle does not lack the answer)."""
    kappa = base - _tensor(oracle_reverse)[1:]
    erased = base - _tensor(reverse)[1:]
    layers = kappa >= GAP_FLOOR
    if not bool(layers.any()):
        return None
    carried = torch.minimum(erased.clamp_min(0), kappa)[layers]
    return float(carried.sum() / kappa[layers].sum())
