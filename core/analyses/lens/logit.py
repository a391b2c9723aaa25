"""Logit lens: the residual stream after every layer, read through the final norm and the unembedding, gives each
answer token's probability and rank per layer for both models; the hidden-knowledge score summarises it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from core.analyses.lens.architecture import final_norm, residual_stream, unembedding
from core.common.errors import UserError
from core.common.serial import JsonResult
from core.models.pair import SIDES, ModelPair
from core.scoring.encoding import encode

LENS_CHUNK_ELEMENTS = 1 << 25  # logits per lens chunk (layers × answer tokens × vocabulary): bounds memory


@dataclass
class LensSide:
    """One model's lens: [layer][answer token] log-prob and 1-based rank of the answer token, and the top token."""

    logprob: list[list[float]]
    rank: list[list[int]]
    top_token: list[list[str]]


@dataclass
class HiddenKnowledge:
    """How much of the answer the last layers take away: known inside, not said.

    With m(l) the answer's mean token log-prob under the lens at decoder layer l ≥ 1: `peak_layer` = argmax m,
    `peak_logprob` = m(peak_layer), `final_logprob` = m(last layer) (the model's own output), and
    `score` = peak_logprob − final_logprob ≥ 0 (nats per token). A high score for the unlearned model and a low one
    for the base model reads: the answer is still there at `peak_layer` and is suppressed only in the last layers.
    """

    side: str
    peak_layer: int
    peak_logprob: float
    final_logprob: float
    score: float
    peak_mean_rank: float


@dataclass
class LensResult(JsonResult):
    """The logit lens of one prompt + answer under both models. Layer 0 is the embedding stream."""

    prompt: str
    answer: str
    chat: bool
    answer_tokens: list[str]
    layers: list[int]
    base: LensSide
    unlearned: LensSide
    truncated: bool = False

    def hidden_knowledge(self) -> dict[str, HiddenKnowledge]:
        return {side: hidden_knowledge_score(self, side) for side in SIDES}

    def to_frame(self) -> pd.DataFrame:
        """Long table: side, layer, answer position and token, log-prob, prob, rank, the lens's top token."""
        records = []
        for side in SIDES:
            lens: LensSide = getattr(self, side)
            for li, layer in enumerate(self.layers):
                for t, token in enumerate(self.answer_tokens):
                    logprob = lens.logprob[li][t]
                    records.append(
                        {
                            "side": side,
                            "layer": layer,
                            "position": t,
                            "token": token,
                            "logprob": logprob,
                            "prob": math.exp(logprob),
                            "rank": lens.rank[li][t],
                            "top_token": lens.top_token[li][t],
                        }
                    )
        return pd.DataFrame(records)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_knowledge"] = {side: asdict(h) for side, h in self.hidden_knowledge().items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LensResult:
        fields_ = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for side in SIDES:
            fields_[side] = LensSide(**data[side])
        return cls(**fields_)


def hidden_knowledge_score(result: LensResult, side: str = "unlearned") -> HiddenKnowledge:
    """Summarise one side's lens (definition in HiddenKnowledge); decoder layers only, the embeddings excluded."""
    lens: LensSide = getattr(result, side)
    mean_logprob = torch.tensor(lens.logprob, dtype=torch.float64).mean(dim=1)[1:]
    mean_rank = torch.tensor(lens.rank, dtype=torch.float64).mean(dim=1)[1:]
    peak = int(mean_logprob.argmax())
    final = float(mean_logprob[-1])
    return HiddenKnowledge(
        side=side,
        peak_layer=result.layers[peak + 1],
        peak_logprob=float(mean_logprob[peak]),
        final_logprob=final,
        score=float(mean_logprob[peak]) - final,
        peak_mean_rank=float(mean_rank[peak]),
    )


def logit_lens(pair: ModelPair, prompt: str, answer: str, chat: bool = False) -> LensResult:
    """Probability and rank of each answer token at every layer, for both models (one forward pass per model)."""
    if answer is None or not answer.strip():
        raise UserError("the answer is empty: the lens follows the answer's tokens through the layers")
    row = encode(pair.tokenizer, prompt, answer, chat, pair.context_length)
    ids = torch.tensor([row.input_ids], device=pair.device)
    p, n = row.score_from, len(row.input_ids) - row.score_from
    targets = ids[0, p:]
    sides = {}
    for side in SIDES:
        with pair.use(side) as model, torch.no_grad():
            with residual_stream(model, lambda h: h[0, p - 1 : p - 1 + n]) as states:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            stream = torch.stack(states)  # [layers + 1, n, H]
            chunk = max(1, LENS_CHUNK_ELEMENTS // (n * unembedding(model).weight.shape[0]))
            parts = [_read_out(model, part, targets) for part in stream.split(chunk)]
        logprob, rank, top = (torch.cat(columns) for columns in zip(*parts, strict=True))
        sides[side] = LensSide(logprob.tolist(), rank.tolist(), [_texts(pair.tokenizer, r) for r in top.tolist()])
    return LensResult(
        prompt=prompt,
        answer=answer,
        chat=chat,
        answer_tokens=_texts(pair.tokenizer, targets.tolist()),
        layers=list(range(len(sides["base"].logprob))),
        base=sides["base"],
        unlearned=sides["unlearned"],
        truncated=row.truncated,
    )


def _read_out(
    model: torch.nn.Module, stream: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final norm + unembedding of [layers, n, H] → target log-prob, target rank and top token, each [layers, n]."""
    logp = torch.log_softmax(unembedding(model)(final_norm(model)(stream)).float(), dim=-1)
    target = logp.gather(-1, targets.view(1, -1, 1).expand(len(stream), -1, 1)).squeeze(-1)
    rank = (logp > target.unsqueeze(-1)).sum(dim=-1) + 1
    return target.cpu(), rank.cpu(), logp.argmax(dim=-1).cpu()


def _texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
