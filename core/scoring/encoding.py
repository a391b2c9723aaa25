"""Texts to scored token rows: prompt (+ answer) tokenised with a template (core.scoring.templates), rows batched.

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
from core.scoring.templates import Template, resolve_template


@dataclass
class Encoded:
    """One prompt (+ answer) as token ids; tokens from `score_from` on are scored. The last `end_tokens` of them are
    the template's end-of-turn tokens and the EOS (scored in evaluation, as open-unlearning scores them)."""

    input_ids: list[int]
    score_from: int
    truncated: bool = False
    end_tokens: int = 0


@dataclass
class Batch:
    """Right-padded ids (positions match the unbatched run), and which positions predict a scored token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    predict_mask: torch.Tensor  # [B, T] True at position t when token t+1 is scored
    targets: torch.Tensor  # [N] the scored tokens, row-major over predict_mask
    rows: list[Encoded]


def encode(
    tokenizer: Any,
    prompt: str,
    answer: str | None = None,
    chat: bool | Template | str = False,
    max_length: int = 2048,
    *,
    template: Template | str | None = None,
    score_end: bool = False,
) -> Encoded:
    """Tokenise prompt (+ answer) with a template (`core.scoring.templates`): `template` by name, file or object;
    without one the legacy `chat` flag picks the model's chat template (True) or the plain format (False).

    `score_end=True` scores what open-unlearning scores: the answer, the template's end-of-turn tokens and the
    appended EOS (`Template.sequence`); False scores the answer's tokens only. Over-long prompts keep their last
    tokens and are flagged as truncated. Texts over MAX_TEXT_CHARS are refused first: every scorer tokenises here,
    and tokenising megabytes takes seconds."""
    check_text(prompt, "prompt")
    check_text(answer, "answer")
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty")
    if answer is not None and not answer.strip():
        raise UserError("the reference answer is empty (leave it out to score the prompt itself)")
    chosen = resolve_template(template if template is not None else chat, tokenizer)
    if answer is None:
        return _fit(chosen.prompt_ids(tokenizer, prompt), [], max_length)
    if chosen.kind == "plain":
        ids = chosen.prompt_ids(tokenizer, prompt)
        return _fit(ids, chosen.answer_ids(tokenizer, prompt, answer), max_length)
    ids, start, stop = chosen.sequence(tokenizer, prompt, answer)
    if stop <= start and not score_end:
        raise UserError(f"the answer {answer!r} leaves no token to score after its prompt (template {chosen.name})")
    # A tag template can tokenise a one-word answer into the prompt's last token (open-unlearning's "tokenization
    # mismatch"): then only the end rows (the EOS) are scored, as it scores them.
    scored = ids[start:] if score_end else ids[start:stop]
    return _fit(ids[:start], scored, max_length, end_tokens=len(ids) - max(stop, start) if score_end else 0)


def scored_row(
    tokenizer: Any,
    prompt: str,
    answer: str,
    template: Template | str | bool | None,
    max_length: int,
    score_end: bool = True,
) -> Encoded:
    """The row that is scored for a question and its answer wherever a probability of the answer is reported: the
    evaluation (`core.evaluation.scores.plan_units`) and the robustness attacks (`core.attacks.base`) both build
    their rows here, so under a chat or tag template an attack's probabilities are the evaluation's. By default
    (`score_end=True`) it is what open-unlearning scores: the answer, the template's end-of-turn tokens and the
    appended EOS; `score_end=False` scores the answer's tokens alone (`evaluate --answer-only`)."""
    chosen = template if template is not None else False
    return encode(tokenizer, prompt, answer, chosen, max_length, score_end=score_end)


def encode_ids(prompt_ids: Sequence[int], answer_ids: Sequence[int], max_length: int = 2048) -> Encoded:
    """Like `encode` for already tokenised parts (a generated continuation is scored exactly as generated)."""
    return _fit(list(prompt_ids), list(answer_ids), max_length)


def _fit(prompt_ids: list[int], answer_ids: list[int], max_length: int, end_tokens: int = 0) -> Encoded:
    if len(answer_ids) >= max_length:
        raise UserError(f"the answer has {len(answer_ids)} tokens, more than the context allows ({max_length})")
    keep = max_length - len(answer_ids)
    truncated = len(prompt_ids) > keep
    prompt_ids = prompt_ids[-keep:] if truncated else prompt_ids
    if not answer_ids:
        if len(prompt_ids) < 2:
            raise UserError("the prompt has a single token: there is nothing to score (add text or an answer)")
        return Encoded(prompt_ids, 1, truncated)
    return Encoded(prompt_ids + answer_ids, len(prompt_ids), truncated, end_tokens)


def collate(rows: list[Encoded], pad_id: int, device: torch.device, pad_mask: bool = False) -> Batch:
    """Right-pad rows into one batch. `pad_mask=True` reproduces open-unlearning's collator, whose attention mask is
    `input_ids != pad_token_id`: where the pad token is also the end-of-turn or EOS token, every such token inside a
    sequence is masked too (docs/FIDELITY.md); False (the default) attends to every real token."""
    width = max(len(row.input_ids) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    predict = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        attention[i, :n] = 1
        if pad_mask:
            attention[i, :n] = (ids[i, :n] != pad_id).long()
        predict[i, row.score_from - 1 : n - 1] = True
    targets = ids[:, 1:][predict[:, :-1]]
    return Batch(ids.to(device), attention.to(device), predict.to(device), targets.to(device), rows)
