"""Forward passes that keep only the logits at scored positions (the LM head never sees the rest)."""

from __future__ import annotations

import itertools

import torch

from core.scoring.encoding import Batch, Encoded, collate


def selected_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits [N, V] at the predicting positions only (the LM head never sees the rest)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    try:
        logits = model(**inputs, logits_to_keep=batch.predict_mask).logits
    except TypeError:  # an architecture without tensor logits_to_keep: compute all, then select
        logits = model(**inputs).logits
    return logits if logits.dim() == 2 else logits[batch.predict_mask]


def shared_prefix_logits(
    model: torch.nn.Module, rows: list[Encoded], pad_id: int, device: torch.device, pad_mask: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selected_logits` for rows that share prompts (an item's answer, paraphrased and perturbed answers), with each
    distinct prompt run once: its keys and values are computed a single time and copied to every row continuing it.

    Returns the logits [N, V] and the scored tokens [N] in `collate`'s order (row by row). Equal to the full
    forward pass up to float rounding; it saves (rows − prompts) × prompt length tokens of work. Rows without an
    answer (score_from = 1) and models that take no key/value cache go through the full pass instead."""
    prompts: dict[tuple[int, ...], int] = {}
    owner = [prompts.setdefault(tuple(row.input_ids[: row.score_from]), len(prompts)) for row in rows]
    if len(prompts) == len(rows) or any(row.score_from < 2 for row in rows):
        batch = collate(rows, pad_id, device, pad_mask)
        return selected_logits(model, batch), batch.targets
    try:
        return _continued_logits(model, rows, list(prompts), owner, pad_id, device, pad_mask)
    except (TypeError, ValueError, AttributeError, NotImplementedError):  # no cache / positions for this model
        batch = collate(rows, pad_id, device, pad_mask)
        return selected_logits(model, batch), batch.targets


def _continued_logits(
    model: torch.nn.Module,
    rows: list[Encoded],
    prompts: list[tuple[int, ...]],
    owner: list[int],
    pad_id: int,
    device: torch.device,
    pad_mask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    prompt_batch = collate([Encoded(list(ids), 1) for ids in prompts], pad_id, device, pad_mask)
    lengths = torch.tensor([len(ids) for ids in prompts], device=device)
    last = torch.zeros_like(prompt_batch.predict_mask)
    last[torch.arange(len(prompts), device=device), lengths - 1] = True  # the position predicting the 1st answer token
    out = model(
        input_ids=prompt_batch.input_ids, attention_mask=prompt_batch.attention_mask, use_cache=True,
        logits_to_keep=last,
    )  # fmt: skip
    first = out.logits if out.logits.dim() == 2 else out.logits[last]  # [prompts, V]
    cache = out.past_key_values
    index = torch.tensor(owner, device=device)
    cache.reorder_cache(index)  # one copy of its prompt's keys/values per row
    answers = [row.input_ids[row.score_from :] for row in rows]
    width = max(len(answer) for answer in answers)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, answer in enumerate(answers):
        ids[i, : len(answer)] = torch.tensor(answer)
        mask[i, : len(answer)] = (ids[i, : len(answer)] != pad_id).long() if pad_mask else 1
        keep[i, : len(answer) - 1] = True  # answer token j predicts token j + 1; the last one predicts nothing scored
    ids, mask, keep = ids.to(device), mask.to(device), keep.to(device)
    positions = lengths[index][:, None] + torch.arange(width, device=device)[None, :]
    rest = model(
        input_ids=ids, attention_mask=torch.cat([prompt_batch.attention_mask[index], mask], dim=1),
        position_ids=positions, past_key_values=cache, use_cache=False, logits_to_keep=keep,
    ).logits  # fmt: skip
    rest = rest if rest.dim() == 2 else rest[keep]
    # row i's scored tokens: its first answer token (from its prompt's last position), then the rest of its answer
    counts = keep.sum(dim=1).tolist()
    starts = [0, *itertools.accumulate(counts)][:-1]
    order = []
    for i, (start, count) in enumerate(zip(starts, counts, strict=True)):
        order.append(owner[i])
        order.extend(range(len(prompts) + start, len(prompts) + start + count))
    logits = torch.cat([first, rest]).index_select(0, torch.tensor(order, device=device))
    targets = torch.tensor([token for answer in answers for token in answer], device=device)
    return logits, targets
