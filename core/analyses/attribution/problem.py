"""The attribution problem: the tokenised prompt and answer, which positions are attributed (grouped into features),
the answer rows, each side's input embeddings and baseline, and the answer's log-probs given those embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.analyses.attribution.settings import GRANULARITIES, AttributionSettings
from core.common.errors import UserError
from core.models.pair import ModelPair
from core.scoring.encoding import encode


def word_groups(texts: Sequence[str], special: Sequence[bool]) -> list[list[int]]:
    """Token indices of each word: a word starts at leading whitespace, a punctuation boundary or a special token."""
    groups: list[list[int]] = []
    for i, text in enumerate(texts):
        starts = (
            not groups
            or special[i]
            or special[i - 1]
            or text[:1].isspace()
            or _is_punctuation(text) != _is_punctuation(texts[i - 1])
        )
        if starts:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not any(ch.isalnum() for ch in stripped)


def _group_matrix(groups: list[list[int]], size: int) -> torch.Tensor:
    """[size, len(groups)] one-hot: multiplying by it sums members into their group."""
    matrix = torch.zeros(size, len(groups))
    for g, members in enumerate(groups):
        matrix[members, g] = 1.0
    return matrix


@dataclass
class Problem:
    """The tokenised prompt + answer: which positions are attributed, grouped into features; answer rows."""

    ids: torch.Tensor  # [L] prompt then answer
    prompt_len: int
    positions: torch.Tensor  # [A] attributed positions; every other input position is fed unchanged
    feature_groups: list[list[int]]  # indices into `positions` of each feature
    row_groups: list[list[int]]  # answer positions (0-based within the answer) of each row
    feature_labels: list[str]
    row_labels: list[str]

    @property
    def answer_ids(self) -> torch.Tensor:
        return self.ids[self.prompt_len :]

    def feature_matrix(self) -> torch.Tensor:
        return _group_matrix(self.feature_groups, len(self.positions))

    def row_matrix(self) -> torch.Tensor:
        return _group_matrix(self.row_groups, len(self.answer_ids))

    def feature_of_position(self) -> torch.Tensor:
        index = torch.empty(len(self.positions), dtype=torch.long)
        for f, members in enumerate(self.feature_groups):
            index[members] = f
        return index


def build_problem(pair: ModelPair, prompt: str, answer: str, chat: bool, settings: AttributionSettings) -> Problem:
    if settings.granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {settings.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    if answer is None or not answer.strip():
        raise UserError("the answer is empty: attribution needs an answer whose log-probability it explains")
    tokenizer = pair.tokenizer
    encoded = encode(tokenizer, prompt, answer, chat, pair.context_length)
    if encoded.truncated:
        raise UserError(
            f"the prompt and answer do not fit the model's context of {pair.context_length} tokens; "
            "shorten the prompt (attribution needs every prompt token)"
        )
    ids = encoded.input_ids
    texts = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    specials = set(getattr(tokenizer, "all_special_ids", None) or []) | {
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    }
    special = [i in specials for i in ids]
    p, n = encoded.score_from, len(ids) - encoded.score_from
    context_end = len(ids) - 1 if settings.include_answer_prefix else p
    # Words never straddle the prompt/answer boundary; special tokens (BOS, chat markers) stay as they are.
    groups = [
        [start + i for i in group]
        for start, stop in ((0, p), (p, context_end))
        for group in _groups(texts[start:stop], special[start:stop], settings.granularity)
        if not (settings.keep_special and special[start + group[0]])
    ]
    positions = [i for group in groups for i in group]
    index = {position: j for j, position in enumerate(positions)}
    if not positions:
        raise UserError("the prompt has no token to attribute to (only special tokens)")
    rows = _groups(texts[p:], special[p:], settings.granularity) if settings.per_token else [list(range(n))]
    return Problem(
        ids=torch.tensor(ids, device=pair.device),
        prompt_len=p,
        positions=torch.tensor(positions, device=pair.device),
        feature_groups=[[index[i] for i in group] for group in groups],
        row_groups=rows,
        feature_labels=["".join(texts[i] for i in group) for group in groups],
        row_labels=["".join(texts[p + i] for i in group) for group in rows],
    )


def _groups(texts: Sequence[str], special: Sequence[bool], granularity: str) -> list[list[int]]:
    return word_groups(texts, special) if granularity == "word" else [[i] for i in range(len(texts))]


@dataclass
class SideInputs:
    """One side's input embeddings (fed as they are except at the attributed positions) and those positions' own
    embeddings and baseline."""

    full: torch.Tensor  # [L - 1, H]
    context: torch.Tensor  # [A, H]
    baseline: torch.Tensor  # [A, H]


def side_inputs(model: torch.nn.Module, problem: Problem, baseline_id: int | None) -> SideInputs:
    embed = model.get_input_embeddings()
    with torch.no_grad():
        full = embed(problem.ids[:-1]).detach()
        context = full[problem.positions]
        if baseline_id is None:
            baseline = torch.zeros_like(context)
        else:
            baseline = embed(torch.full_like(problem.positions, baseline_id)).detach()
    return SideInputs(full, context, baseline)


def answer_logprobs(
    model: torch.nn.Module, inputs: SideInputs, problem: Problem, context_embeds: torch.Tensor
) -> torch.Tensor:
    """Log-prob of each answer token [B, n] given the attributed positions' embeddings [B, A, H]."""
    batch = context_embeds.shape[0]
    full = inputs.full.unsqueeze(0).expand(batch, -1, -1).to(context_embeds.dtype)
    embeds = full.index_copy(1, problem.positions, context_embeds)
    n = len(problem.answer_ids)
    try:
        logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=n).logits
    except TypeError:  # an architecture without logits_to_keep
        logits = model(inputs_embeds=embeds, use_cache=False).logits
    logp = torch.log_softmax(logits[:, -n:].float(), dim=-1)
    return logp.gather(-1, problem.answer_ids.view(1, n, 1).expand(batch, n, 1)).squeeze(-1)


def row_logprobs(
    model: torch.nn.Module, inputs: SideInputs, problem: Problem, context_embeds: torch.Tensor
) -> torch.Tensor:
    """Log-prob of each answer row [B, R]: sums of its tokens' log-probs."""
    rows = problem.row_matrix().to(context_embeds.device)
    return answer_logprobs(model, inputs, problem, context_embeds) @ rows
