"""Logit lens: the residual stream after every layer, read through the model's own head (final norm, unembedding and
whatever post-processing the model applies), gives each answer token's probability and rank per layer for both
models; the hidden-knowledge score summarises it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from core.analyses.lens.architecture import decoder_layers, own_head, residual_stream, unembedding
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
    """Probability and rank of each answer token at every layer, for both models: each layer's residual stream read
    through the model's own head (`own_head`), in the same forward pass that records it where the logits fit one
    chunk (LENS_CHUNK_ELEMENTS), one more pass per further chunk of layers otherwise."""
    if answer is None or not answer.strip():
        raise UserError("the answer is empty: the lens follows the answer's tokens through the layers")
    row = encode(pair.tokenizer, prompt, answer, chat, pair.context_length)
    ids = torch.tensor([row.input_ids], device=pair.device)
    p, n = row.score_from, len(row.input_ids) - row.score_from
    targets = ids[0, p:]
    sides = {}
    for side in SIDES:
        with pair.use(side) as model, torch.no_grad():
            parts = _side_lens(model, ids, n, targets)
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


def _side_lens(
    model: torch.nn.Module, ids: torch.Tensor, n: int, targets: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per chunk of layers, the answer tokens' log-prob, rank and top token under the model's own head."""
    rows = len(decoder_layers(model)) + 1
    chunk = max(1, LENS_CHUNK_ELEMENTS // ((n + 1) * unembedding(model).weight.shape[0]))
    bounds = [(start, min(rows, start + chunk)) for start in range(0, rows, chunk)]
    parts = []
    recorded: list[torch.Tensor] = []  # the stream, once the first pass has recorded it

    def read(start: int, end: int, live: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack((recorded or live)[start:end])

    with residual_stream(model, lambda h: h[0]) as states:
        for start, end in bounds:
            with own_head(model, lambda s=start, e=end: read(s, e, states)):
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=n + 1).logits
            recorded = recorded or states[:rows]
            parts.append(_read_out(logits[:, :n], targets))
    return parts


def _read_out(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [layers, n, V] at the answer-predicting positions → target log-prob, rank and top token, [layers, n]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = logp.gather(-1, targets.view(1, -1, 1).expand(len(logp), -1, 1)).squeeze(-1)
    rank = (logp > target.unsqueeze(-1)).sum(dim=-1) + 1
    return target.cpu(), rank.cpu(), logp.argmax(dim=-1).cpu()


def _texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
