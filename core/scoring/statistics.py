"""Per-token statistics of next-token distributions, straight from logits: the one routine the probe, the
evaluation and the robustness attacks score with.

Logits are reduced in row chunks small enough to stay in cache, with one exp pass per chunk:
e = exp(z − max), lse = max + log Σe, p = e / Σe. No [rows, V] log-prob or probability tensor is materialised.
"""

from __future__ import annotations

import math

import torch

CHUNK_ROWS = 32  # rows of [N, V] logits reduced at once: a chunk (32 x 49k floats = 6 MiB) stays in L3 cache


def token_statistics(
    logits: torch.Tensor,
    targets: torch.Tensor,
    moments: torch.Tensor | bool = True,
    *,
    top_k: int | None = None,
    ranks: bool = False,
    entropy: bool = False,
    kl_to: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    model_dtype_logp: bool = False,
) -> dict[str, torch.Tensor]:
    """Per scored token (row of `logits` [N, V], its token in `targets` [N]), always:

    - `logp`: the target's log-prob, `argmax`: the most likely id, `lse`: log Σ exp z (the normaliser);

    and on request:

    - `mu`, `sigma` (Min-K%++): mean and std of log p under p itself, where `moments` is True (a bool mask [N]
      picks rows, the others are NaN; False leaves both out);
    - `top_ids`, `top_logp`: the `top_k` most likely ids and their log-probs (k may be 0);
    - `rank` (1 = the most likely; ties count in the target's favour) and `entropy` (nats);
    - `kl`: KL(this ‖ other) for `kl_to` = (other logits [N, V], their `lse`), exactly 0 for equal logits.

    Everything is computed in float32 from the logits (μ/σ in float64). `model_dtype_logp=True` reproduces
    open-unlearning's arithmetic (docs/FIDELITY.md): `logp` from a log-softmax in the logits' own dtype (its
    token-wise metrics; bf16 models), and `loss_logp`, minus torch's cross-entropy over the logits laid out
    [1, V, N] in their own dtype, as its `evaluate_probability` computes avg_loss (that kernel's float32 sum over the
    vocabulary differs from the exact value by ~1e-4 nats on a 49k vocabulary).
    """
    count = len(targets)
    if isinstance(moments, bool):
        wanted = torch.full((count,), moments, dtype=torch.bool, device=targets.device)
    else:
        wanted = moments
    options = {"top_k": top_k, "ranks": ranks, "entropy": entropy, "moments": moments is not False}
    parts = []
    for start in range(0, max(count, 1), chunk_rows):
        end = min(start + chunk_rows, count)
        other = None if kl_to is None else (kl_to[0][start:end].float(), kl_to[1][start:end])
        z = logits[start:end].float()
        part = _chunk_statistics(z, targets[start:end], wanted[start:end], other, **options)
        if model_dtype_logp:
            raw, wanted_targets = logits[start:end], targets[start:end]
            if raw.dtype != z.dtype:
                part["logp"] = torch.log_softmax(raw, dim=-1).gather(1, wanted_targets[:, None])[:, 0].float()
            loss = torch.nn.functional.cross_entropy(raw.T[None], wanted_targets[None], reduction="none")[0]
            part["loss_logp"] = -loss.float()
        parts.append(part)
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _chunk_statistics(
    z: torch.Tensor,
    targets: torch.Tensor,
    wanted: torch.Tensor,
    other: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    top_k: int | None,
    ranks: bool,
    entropy: bool,
    moments: bool,
) -> dict[str, torch.Tensor]:
    """One chunk's statistics; the maximum comes from the top-k where one is asked for."""
    top = None if top_k is None else z.topk(max(top_k, 1), dim=-1)
    peak = z.amax(dim=-1, keepdim=True) if top is None else top.values[:, :1]
    e = torch.exp(z - peak)
    total = e.sum(dim=-1)
    lse = peak[:, 0] + total.log()
    target_z = z.gather(1, targets[:, None])
    out = {"logp": target_z[:, 0] - lse, "argmax": z.argmax(dim=-1), "lse": lse}
    if top is not None:
        out |= {"top_ids": top.indices[:, :top_k], "top_logp": top.values[:, :top_k] - lse[:, None]}
    if ranks:
        out["rank"] = (z > target_z).sum(dim=-1) + 1
    if entropy or other is not None:
        p_dot_z = torch.linalg.vecdot(e, z) / total
    if entropy:
        out["entropy"] = lse - p_dot_z
    if other is not None:
        # KL = Σ p (log p − log q) = Σ p z − Σ p z_q + lse_q − lse; exactly 0 for equal logits.
        z_other, lse_other = other
        cross = torch.linalg.vecdot(e, z_other) / total
        out["kl"] = (p_dot_z - cross + lse_other - lse).clamp_min(0.0)
    if moments:
        out |= _masked_moments(z, lse, wanted)
    return out


def _masked_moments(z: torch.Tensor, lse: torch.Tensor, wanted: torch.Tensor) -> dict[str, torch.Tensor]:
    """μ and σ of log p at the wanted rows, NaN elsewhere."""
    mu = torch.full((len(z),), math.nan, device=z.device)
    sigma = torch.full((len(z),), math.nan, device=z.device)
    rows = wanted.nonzero()[:, 0]
    if rows.numel():
        mu[rows], sigma[rows] = _log_prob_moments(z[rows], lse[rows])
    return {"mu": mu, "sigma": sigma}


def _log_prob_moments(z: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of log p under p itself, in float64 from log p = z − logsumexp(z): μ = Σ p·log p has no
    Σ p·z − lse cancellation on confident rows, and the variance is taken about the mean."""
    z64 = z.double()
    logp = z64 - torch.logsumexp(z64, dim=-1, keepdim=True)
    probs = logp.exp()
    mu = torch.linalg.vecdot(probs, logp)
    variance = torch.linalg.vecdot(probs, (logp - mu[:, None]).square())
    return mu.to(z.dtype), variance.sqrt().to(z.dtype)
