"""Texts to scored token rows: prompt (+ answer) tokenised, with or without the chat template, and rows batched.

Every scorer tokenises here (probe, evaluation, attacks, attribution, lens, training), so a prompt is the same
tokens wherever it is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.common.errors import UserError
from core.common.limits import check_text


@dataclass
class Encoded:
    """One prompt (+ answer) as token ids; tokens from `score_from` on are scored."""

    input_ids: list[int]
    score_from: int
    truncated: bool = False


@dataclass
class Batch:
    """Right-padded ids (positions match the unbatched run), and which positions predict a scored token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    predict_mask: torch.Tensor  # [B, T] True at position t when token t+1 is scored
    targets: torch.Tensor  # [N] the scored tokens, row-major over predict_mask
    rows: list[Encoded]


def encode(
    tokenizer: Any, prompt: str, answer: str | None = None, chat: bool = False, max_length: int = 2048
) -> Encoded:
    """Tokenise prompt (+ answer); over-long prompts keep their last tokens and are flagged as truncated. Texts
    over MAX_TEXT_CHARS are refused first: every scorer tokenises here, and tokenising megabytes takes seconds."""
    check_text(prompt, "prompt")
    check_text(answer, "answer")
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty")
    if answer is not None and not answer.strip():
        raise UserError("the reference answer is empty (leave it out to score the prompt itself)")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("this tokenizer has no chat template; turn the chat template off")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    else:
        prompt_ids = tokenizer(prompt).input_ids
    if answer is None:
        return _fit(prompt_ids, [], max_length)
    if not chat and not prompt[-1].isspace() and not answer[0].isspace():
        answer = " " + answer
    return _fit(prompt_ids, tokenizer(answer, add_special_tokens=False).input_ids, max_length)


def encode_ids(prompt_ids: Sequence[int], answer_ids: Sequence[int], max_length: int = 2048) -> Encoded:
    """Like `encode` for already tokenised parts (a generated continuation is scored exactly as generated)."""
    return _fit(list(prompt_ids), list(answer_ids), max_length)


def _fit(prompt_ids: list[int], answer_ids: list[int], max_length: int) -> Encoded:
    if len(answer_ids) >= max_length:
        raise UserError(f"the answer has {len(answer_ids)} tokens, more than the context allows ({max_length})")
    keep = max_length - len(answer_ids)
    truncated = len(prompt_ids) > keep
    prompt_ids = prompt_ids[-keep:] if truncated else prompt_ids
    if not answer_ids:
        if len(prompt_ids) < 2:
            raise UserError("the prompt has a single token: there is nothing to score (add text or an answer)")
        return Encoded(prompt_ids, 1, truncated)
    return Encoded(prompt_ids + answer_ids, len(prompt_ids), truncated)


def collate(rows: list[Encoded], pad_id: int, device: torch.device) -> Batch:
    width = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    predict = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        attention[i, :n] = 1
        predict[i, row.score_from - 1 : n - 1] = True
    targets = ids[:, 1:][predict[:, :-1]]
    return Batch(ids.to(device), attention.to(device), predict.to(device), targets.to(device), rows)
