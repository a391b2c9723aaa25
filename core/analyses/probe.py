"""Per-token likelihood shift between the two sides of a pair, and side-by-side generation.

Scoring is teacher-forced: one batched forward pass per model per batch gives every statistic of every
scored token (log-prob, rank, entropy, top-k, and KL between the two next-token distributions).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from core.common.errors import UserError
from core.common.limits import (
    FORWARD_ACTIVATION_FACTOR,
    MAX_BATCH_SIZE,
    MAX_NEW_TOKENS,
    MAX_TOP_K,
    activation_bytes,
    check_range,
    ensure_fits,
    model_shape,
)
from core.models.adapters import mixed_batch_supported, two_sided_lora
from core.models.pair import SIDES, ModelPair
from core.scoring.encoding import Batch, Encoded, collate, encode, encode_ids
from core.scoring.forward import selected_logits
from core.scoring.statistics import CHUNK_ROWS, token_statistics
from core.scoring.templates import Template

DEFAULT_TOP_K = 5
_SAMPLING_LOCK = threading.Lock()  # sampled generation seeds torch's global RNG: one seeded draw at a time


def pair_statistics(
    logits_base: torch.Tensor,
    logits_unlearned: torch.Tensor,
    targets: torch.Tensor,
    top_k: int,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, dict[str, torch.Tensor]]:
    """Both sides' log-prob, rank, entropy and top-k, plus KL(base‖unlearned) on the base side."""
    options = {"top_k": top_k, "ranks": True, "entropy": True, "chunk_rows": chunk_rows}
    unlearned = token_statistics(logits_unlearned, targets, False, **options)
    base = token_statistics(logits_base, targets, False, kl_to=(logits_unlearned, unlearned["lse"]), **options)
    kept = ("logp", "rank", "entropy", "top_ids", "top_logp", "kl")
    return {
        side: {key: stats[key] for key in kept if key in stats}
        for side, stats in (("base", base), ("unlearned", unlearned))
    }


@dataclass
class TokenShift:
    """One scored token under both models."""

    position: int
    token: str
    token_id: int
    logprob_base: float
    logprob_unlearned: float
    delta: float
    rank_base: int
    rank_unlearned: int
    entropy_base: float
    entropy_unlearned: float
    kl: float
    topk_base: list[tuple[str, float]] = field(default_factory=list)
    topk_unlearned: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ProbeResult:
    """The likelihood shift of one prompt (+ answer): scored tokens are the answer's, else the prompt's."""

    prompt: str
    answer: str | None
    chat: bool | str  # the template: its name (True / False: the chat template / plain, as older results say)
    context_tokens: list[str]
    tokens: list[TokenShift]
    truncated: bool = False
    end_tokens: int = 0  # the last `end_tokens` scored rows are the template's end-of-turn tokens and EOS

    @property
    def answer_logprob_base(self) -> float:
        return float(sum(t.logprob_base for t in self.tokens))

    @property
    def answer_logprob_unlearned(self) -> float:
        return float(sum(t.logprob_unlearned for t in self.tokens))

    @property
    def delta(self) -> float:
        return self.answer_logprob_unlearned - self.answer_logprob_base

    def to_frame(self) -> pd.DataFrame:
        rows = [asdict(t) for t in self.tokens]
        for row in rows:
            row["topk_base"] = ", ".join(f"{tok!r} {p:.3f}" for tok, p in row["topk_base"])
            row["topk_unlearned"] = ", ".join(f"{tok!r} {p:.3f}" for tok, p in row["topk_unlearned"])
        return pd.DataFrame(rows, columns=list(TokenShift.__dataclass_fields__))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["answer_logprob_base"] = self.answer_logprob_base
        data["answer_logprob_unlearned"] = self.answer_logprob_unlearned
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        tokens = []
        for raw in data["tokens"]:
            raw = {k: v for k, v in raw.items() if k in TokenShift.__dataclass_fields__}
            raw["topk_base"] = [tuple(x) for x in raw.get("topk_base", [])]
            raw["topk_unlearned"] = [tuple(x) for x in raw.get("topk_unlearned", [])]
            tokens.append(TokenShift(**raw))
        return cls(
            data["prompt"],
            data.get("answer"),
            data.get("chat", False),
            data.get("context_tokens", []),
            tokens,
            data.get("truncated", False),
            data.get("end_tokens", 0),
        )

    @classmethod
    def from_json(cls, text: str) -> ProbeResult:
        return cls.from_dict(json.loads(text))


@dataclass
class ProbeRequest:
    prompt: str
    answer: str | None = None


def score(
    pair: ModelPair,
    requests: Sequence[ProbeRequest | Encoded],
    chat: bool | str | Template = False,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: Callable[[float], None] | None = None,
    score_end: bool = False,
) -> list[ProbeResult]:
    """Score each request under both models: one forward pass per model per batch. `chat` is the template (a name,
    file or Template; True / False: the chat template / plain); `score_end=True` also scores the template's
    end-of-turn tokens and EOS after the answer (marked by `ProbeResult.end_tokens`). The attention mask is all
    ones over each row: the probe never reproduces open-unlearning's pad-token mask."""
    if not requests:
        raise UserError("nothing to score")
    check_range(top_k, 0, MAX_TOP_K, "top_k")
    check_range(batch_size, 1, MAX_BATCH_SIZE, "batch size")
    limit = max_length or pair.context_length
    encoded = [
        r if isinstance(r, Encoded) else encode(pair.tokenizer, r.prompt, r.answer, chat, limit, score_end=score_end)
        for r in requests
    ]
    name = chat.name if isinstance(chat, Template) else chat
    results: list[ProbeResult] = []
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        _ensure_batch_fits(pair, rows)
        shifts = _score_batch(pair, collate(rows, pair.tokenizer.pad_token_id, pair.device), top_k)
        for offset, (row, tokens) in enumerate(zip(rows, shifts, strict=True)):
            request = requests[start + offset]
            prompt = request.prompt if isinstance(request, ProbeRequest) else ""
            answer = request.answer if isinstance(request, ProbeRequest) else None
            context_ids = row.input_ids[: row.score_from]
            context_texts = token_texts(pair.tokenizer, context_ids)
            context = [context_texts[i] for i in context_ids]
            results.append(ProbeResult(prompt, answer, name, context, tokens, row.truncated, row.end_tokens))
        if progress:
            progress(min(1.0, (start + len(rows)) / len(encoded)))
    return results


def _ensure_batch_fits(pair: ModelPair, rows: list[Encoded]) -> None:
    """Refuse a batch whose forward pass would not fit: one layer's working set over the padded batch, plus both
    sides' logits at the scored positions (their float copies are taken in small chunks). Measured on SmolLM2-135M,
    16 rows of 303 tokens: estimate 2.1 GiB, peak growth 2.3 GiB."""
    with pair.use("base") as model:
        shape = model_shape(model)
    itemsize = torch.empty((), dtype=pair.dtype).element_size()
    width = max(len(row.input_ids) for row in rows)
    scored = sum(len(row.input_ids) - row.score_from for row in rows)
    working = activation_bytes(len(rows), width, shape.hidden, 1, itemsize, FORWARD_ACTIVATION_FACTOR)
    logits = 2 * scored * shape.vocab * itemsize
    ensure_fits(working + logits, pair.device, f"scoring {len(rows)} texts of up to {width} tokens")


def _score_batch(pair: ModelPair, batch: Batch, top_k: int) -> list[list[TokenShift]]:
    logits = _joint_logits(pair, batch)
    if logits is None:
        logits = {}
        for side in SIDES:
            with pair.use(side) as model, torch.no_grad():
                logits[side] = selected_logits(model, batch)
    stats = pair_statistics(logits["base"], logits["unlearned"], batch.targets, top_k)
    return to_shifts(pair.tokenizer, batch, stats)


def _joint_logits(pair: ModelPair, batch: Batch) -> dict[str, torch.Tensor] | None:
    """Both sides' logits from one forward pass of the batch stacked twice, where the pair's sides are adapters on
    one PEFT backbone (PEFT routes each row through its side's adapter); None where they are not."""
    with pair.joint() as joint, torch.no_grad():
        if joint is None:
            return None
        model, names = joint
        rows = len(batch.rows)
        keep = batch.predict_mask.repeat(2, 1)  # the batch's rows for the base side, then again for the unlearned
        inputs = {
            "input_ids": batch.input_ids.repeat(2, 1), "attention_mask": batch.attention_mask.repeat(2, 1),
            "use_cache": False, "logits_to_keep": keep,
        }  # fmt: skip
        with two_sided_lora(model, names) as stacked:
            if not stacked:  # LoRA variants and non-linear LoRA layers: PEFT's own mixed batch, where PEFT takes it
                if not mixed_batch_supported(model, names):
                    return None  # DoRA, merged adapters: one pass per side
                inputs["adapter_names"] = [names[0]] * rows + [names[1]] * rows
            logits = model(**inputs).logits
        logits = logits if logits.dim() == 2 else logits[keep]
    half = len(batch.targets)
    return {"base": logits[:half], "unlearned": logits[half:]}


def to_shifts(tokenizer: Any, batch: Batch, stats: dict[str, dict[str, torch.Tensor]]) -> list[list[TokenShift]]:
    cols = {
        f"{key}_{side}": values.cpu().tolist()
        for side, side_stats in stats.items()
        for key, values in side_stats.items()
    }
    targets = batch.targets.cpu().tolist()
    texts = token_texts(tokenizer, targets + [i for side in SIDES for ids in cols[f"top_ids_{side}"] for i in ids])
    out: list[list[TokenShift]] = []
    i = 0
    for row in batch.rows:
        tokens = []
        for position in range(row.score_from, len(row.input_ids)):
            lp_b, lp_u = cols["logp_base"][i], cols["logp_unlearned"][i]
            tokens.append(
                TokenShift(
                    position=position,
                    token=texts[targets[i]],
                    token_id=targets[i],
                    logprob_base=lp_b,
                    logprob_unlearned=lp_u,
                    delta=lp_u - lp_b,
                    rank_base=cols["rank_base"][i],
                    rank_unlearned=cols["rank_unlearned"][i],
                    entropy_base=cols["entropy_base"][i],
                    entropy_unlearned=cols["entropy_unlearned"][i],
                    kl=cols["kl_base"][i],
                    topk_base=_topk(texts, cols["top_ids_base"][i], cols["top_logp_base"][i]),
                    topk_unlearned=_topk(texts, cols["top_ids_unlearned"][i], cols["top_logp_unlearned"][i]),
                )
            )
            i += 1
        out.append(tokens)
    return out


def _topk(texts: dict[int, str], ids: list[int], logps: list[float]) -> list[tuple[str, float]]:
    return [(texts[i], math.exp(lp)) for i, lp in zip(ids, logps, strict=True)]


def token_texts(tokenizer: Any, ids: Sequence[int]) -> dict[int, str]:
    """Each distinct token as the text it adds (byte-level markers decoded, 'Ġ' shows as a space): one call."""
    unique = sorted(set(ids))
    decoded = tokenizer.batch_decode([[i] for i in unique], clean_up_tokenization_spaces=False)
    return dict(zip(unique, decoded, strict=True))


@dataclass
class GenerationSettings:
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class GenerationResult:
    """Both models' continuations of one prompt, each scored by both models (cross-scoring)."""

    prompt: str
    chat: bool | str  # the template's name (True / False: the chat template / plain)
    settings: GenerationSettings
    base_text: str
    unlearned_text: str
    base_scored: ProbeResult
    unlearned_scored: ProbeResult
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["base_scored"] = self.base_scored.to_dict()
        data["unlearned_scored"] = self.unlearned_scored.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationResult:
        return cls(
            data["prompt"],
            data["chat"],
            GenerationSettings(**data["settings"]),
            data["base_text"],
            data["unlearned_text"],
            ProbeResult.from_dict(data["base_scored"]),
            ProbeResult.from_dict(data["unlearned_scored"]),
            data.get("truncated", False),
        )


def generate(
    pair: ModelPair,
    prompt: str,
    chat: bool | str = True,
    settings: GenerationSettings | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_length: int | None = None,
) -> GenerationResult:
    """Generate from both sides (greedy, or sampled with a seed), then score each output under both models."""
    settings = settings or GenerationSettings()
    check_range(settings.max_new_tokens, 1, MAX_NEW_TOKENS, "max_new_tokens")
    limit = (max_length or pair.context_length) - settings.max_new_tokens
    if limit < 2:
        raise UserError(f"max_new_tokens={settings.max_new_tokens} leaves no room for the prompt in the context")
    prompt_row = encode(pair.tokenizer, prompt, None, chat, limit)
    texts, new_ids = {}, {}
    for side in SIDES:
        new_ids[side] = _generate_side(pair, side, prompt_row.input_ids, settings)
        texts[side] = pair.tokenizer.decode(new_ids[side], skip_special_tokens=True)
    scored = {}
    for side in SIDES:
        if not new_ids[side]:
            raise UserError(f"the {side} model generated nothing for this prompt")
        row = encode_ids(prompt_row.input_ids, new_ids[side], limit + settings.max_new_tokens)
        scored[side] = score(pair, [row], chat=chat, top_k=top_k)[0]
        scored[side].prompt, scored[side].answer = prompt, texts[side]
    return GenerationResult(
        prompt,
        chat,
        settings,
        texts["base"],
        texts["unlearned"],
        scored["base"],
        scored["unlearned"],
        prompt_row.truncated,
    )


def _generate_side(pair: ModelPair, side: str, prompt_ids: list[int], settings: GenerationSettings) -> list[int]:
    ids = torch.tensor([prompt_ids], device=pair.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "pad_token_id": pair.tokenizer.pad_token_id,
        "attention_mask": torch.ones_like(ids),
    }
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with pair.use(side) as model, torch.no_grad():
        if settings.do_sample:
            with _SAMPLING_LOCK:
                torch.manual_seed(settings.seed)
                out = model.generate(ids, **kwargs)
        else:
            out = model.generate(ids, **kwargs)
    return out[0, len(prompt_ids) :].tolist()
