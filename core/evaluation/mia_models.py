"""The MIA attacks that need more than the shared forward pass: gradient norm (a backward pass per item) and the
reference model's losses (another model scored on the same rows).

As open-unlearning (src/evals/metrics/mia/gradnorm.py, reference.py @ d3d7cf9): the gradient-norm score is the mean
over parameter tensors of each tensor's gradient p-norm (p = 2) of the item's mean token loss (a final EOS left out);
the reference score is the target's average loss minus the reference model's on the same tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from core.data.qa import SplitData
from core.evaluation.mia import auc_entry
from core.evaluation.scores import pad_token_id
from core.evaluation.settings import MIA_SPLITS, EvalSettings
from core.scoring.encoding import Encoded, collate, encode
from core.scoring.forward import selected_logits
from core.scoring.templates import Template

GRADNORM_P = 2


def _mia_rows(dataset: SplitData, tokenizer: Any, template: Template, settings: EvalSettings, limit: int) -> dict:
    rows = {}
    for split in MIA_SPLITS:
        qa = getattr(dataset, split)
        rows[split] = [
            (item, encode(tokenizer, item.question, item.answer, max_length=limit, template=template,
                          score_end=settings.score_end))
            for item in qa
        ]  # fmt: skip
    return rows


def item_grad_norm(
    model: torch.nn.Module, row: Encoded, pad_id: int, eos_id: int | None, pad_mask: bool, p: float = GRADNORM_P
) -> float:
    """Mean over parameter tensors of ‖∂ loss / ∂ tensor‖_p, loss = the mean negative log-prob of the scored tokens
    (a final EOS left out, as open-unlearning's token-wise log-probs do)."""
    device = next(model.parameters()).device
    batch = collate([row], pad_id, device, pad_mask)
    with torch.enable_grad():
        logits = selected_logits(model, batch)
        logp = torch.log_softmax(logits, dim=-1).gather(1, batch.targets[:, None])[:, 0]
        if row.end_tokens > 0 and eos_id is not None and int(batch.targets[-1]) == eos_id and len(logp) > 1:
            logp = logp[:-1]
        model.zero_grad(set_to_none=True)
        (-logp.mean()).backward()
    norms = [param.grad.detach().float().norm(p=p) for param in model.parameters() if param.grad is not None]
    model.zero_grad(set_to_none=True)
    return float(torch.stack(norms).mean())


def gradnorm_logs(
    model: torch.nn.Module, tokenizer: Any, dataset: SplitData, template: Template, settings: EvalSettings, limit: int
) -> dict[str, Any]:
    """mia_gradnorm on forget and holdout: every parameter takes a gradient for the attack, then is restored."""
    if any(getattr(dataset, split) is None for split in MIA_SPLITS):
        return {}
    rows = _mia_rows(dataset, tokenizer, template, settings, limit)
    params = list(model.parameters())
    flags = [param.requires_grad for param in params]
    pad_id = pad_token_id(tokenizer)
    try:
        for param in params:
            param.requires_grad_(True)
        scores = {
            split: [item_grad_norm(model, row, pad_id, tokenizer.eos_token_id, settings.pad_mask) for _, row in pairs]
            for split, pairs in rows.items()
        }
    finally:
        for param, flag in zip(params, flags, strict=True):
            param.requires_grad_(flag)
            param.grad = None
    indices = {split: [str(item.index) for item, _ in pairs] for split, pairs in rows.items()}
    return {"mia_gradnorm": auc_entry(indices, scores)}


def reference_losses(
    model: torch.nn.Module, tokenizer: Any, dataset: SplitData, template: Template, settings: EvalSettings
) -> dict[str, dict[str, float]]:
    """A reference model's average loss per forget / holdout item (keyed as EVAL entries are: str(index))."""
    from core.evaluation.evaluate import evaluate_model  # the same rows, scored as any evaluated model's

    only = dataclasses.replace(settings, rouge=False, gradnorm=False, reference=None)
    mia_only = SplitData(forget=dataset.forget, holdout=dataset.holdout)
    logs = evaluate_model(model, tokenizer, mia_only, only, template=template)
    return {
        split: {index: record["score"] for index, record in logs["mia_loss"][split]["value_by_index"].items()}
        for split in MIA_SPLITS
    }
