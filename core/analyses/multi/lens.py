"""The logit lens across checkpoints: for one prompt and answer, the answer's log-prob and rank at every layer of
every model of a set (core.analyses.lens.logit_lens on each base / model pair), so a layer × step map shows when
the answer stopped ranking high during unlearning, and from which depth on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from core.analyses.lens import logit_lens
from core.analyses.multi.models import ModelSet
from core.common.errors import UserError


@dataclass
class CheckpointLens:
    """`logprob[m][l]` / `rank[m][l]`: the mean over the answer's tokens of their log-prob and of their 1-based rank
    under the lens at layer `layers[l]` of model `models[m]`; `base_*` the same for the base. Layer 0 is the
    embedding stream. `runs` and `steps` say which run and step each model comes from (None: a single model)."""

    prompt: str
    answer: str
    chat: bool
    answer_tokens: list[str]
    layers: list[int]
    models: list[str]
    runs: list[str | None]
    steps: list[int | None]
    logprob: list[list[float]]
    rank: list[list[float]]
    base_logprob: list[float]
    base_rank: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointLens:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _means(values: list[list[float]]) -> list[float]:
    return torch.tensor(values, dtype=torch.float64).mean(dim=1).tolist()


def lens_across(
    models: ModelSet, prompt: str, answer: str, chat: bool = False, progress: Callable[[float], None] | None = None
) -> CheckpointLens:
    """The logit lens of `prompt` + `answer` under every model of the set (one lens per base / model pair)."""
    logprob, rank = [], []
    base_logprob: list[float] = []
    base_rank: list[float] = []
    first = None
    for i in range(len(models.entries)):
        result = logit_lens(models.pair(i), prompt, answer, chat)
        first = first or result
        logprob.append(_means(result.unlearned.logprob))
        rank.append(_means(result.unlearned.rank))
        if i == 0:
            base_logprob, base_rank = _means(result.base.logprob), _means(result.base.rank)
        if progress:
            progress((i + 1) / len(models.entries))
    if first is None:
        raise UserError("the set holds no unlearned model")
    return CheckpointLens(
        prompt, answer, chat, first.answer_tokens, first.layers, models.labels,
        [entry.run for entry in models.entries], [entry.step for entry in models.entries],
        logprob, rank, base_logprob, base_rank,
    )  # fmt: skip
