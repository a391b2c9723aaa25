"""Per-token likelihood shift between the two sides of a pair, and side-by-side generation.

Scoring is teacher-forced: one batched forward pass per model per batch gives every statistic of every
scored token (log-prob, rank, entropy, top-k, and KL between the two next-token distributions).
"""

from __future__ import annotations

import itertools
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
    check_text,
    ensure_fits,
    model_shape,
)
from core.models.adapters import two_sided_lora
from core.models.pair import SIDES, ModelPair

DEFAULT_TOP_K = 5
CHUNK_ROWS = 32  # rows of [N, V] logits reduced at once: a chunk (32 x 49k floats = 6 MiB) stays in L3 cache
_SAMPLING_LOCK = threading.Lock()  # sampled generation seeds torch's global RNG: one seeded draw at a time


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


def selected_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits [N, V] at the predicting positions only (the LM head never sees the rest)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    try:
        logits = model(**inputs, logits_to_keep=batch.predict_mask).logits
    except TypeError:  # an architecture without tensor logits_to_keep: compute all, then select
        logits = model(**inputs).logits
    return logits if logits.dim() == 2 else logits[batch.predict_mask]


def shared_prefix_logits(
    model: torch.nn.Module, rows: list[Encoded], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selected_logits` for rows that share prompts (an item's answer, paraphrased and perturbed answers), with each
    distinct prompt run once: its keys and values are computed a single time and copied to every row continuing it.

    Returns the logits [N, V] and the scored tokens [N] in `collate`'s order (row by row). Equal to the full
    forward pass up to float rounding; it saves (rows − prompts) × prompt length tokens of work. Rows without an
    answer (score_from = 1) and models that take no key/value cache go through the full pass instead."""
    prompts: dict[tuple[int, ...], int] = {}
    owner = [prompts.setdefault(tuple(row.input_ids[: row.score_from]), len(prompts)) for row in rows]
    if len(prompts) == len(rows) or any(row.score_from < 2 for row in rows):
        batch = collate(rows, pad_id, device)
        return selected_logits(model, batch), batch.targets
    try:
        return _continued_logits(model, rows, list(prompts), owner, pad_id, device)
    except (TypeError, ValueError, AttributeError, NotImplementedError):  # no cache / positions for this model
        batch = collate(rows, pad_id, device)
        return selected_logits(model, batch), batch.targets


def _continued_logits(
    model: torch.nn.Module,
    rows: list[Encoded],
    prompts: list[tuple[int, ...]],
    owner: list[int],
    pad_id: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    prompt_batch = collate([Encoded(list(ids), 1) for ids in prompts], pad_id, device)
    lengths = prompt_batch.attention_mask.sum(dim=1)
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
        mask[i, : len(answer)] = 1
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


def pair_statistics(
    logits_base: torch.Tensor,
    logits_unlearned: torch.Tensor,
    targets: torch.Tensor,
    top_k: int,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, dict[str, torch.Tensor]]:
    """Both sides' statistics plus KL(base‖unlearned), in row chunks small enough to stay in cache."""
    parts: dict[str, list[dict[str, torch.Tensor]]] = {"base": [], "unlearned": []}
    for s in range(0, len(targets), chunk_rows):
        z_b, z_u = logits_base[s : s + chunk_rows].float(), logits_unlearned[s : s + chunk_rows].float()
        stats_b, (exp_b, sum_b) = _chunk_statistics(z_b, targets[s : s + chunk_rows], top_k)
        stats_u, _ = _chunk_statistics(z_u, targets[s : s + chunk_rows], top_k)
        # KL = Σ p_b (log p_b − log p_u) = Σ p_b z_b − Σ p_b z_u + lse_u − lse_b; exactly 0 for equal logits.
        cross = torch.linalg.vecdot(exp_b, z_u) / sum_b
        kl = stats_b.pop("p_dot_z") - cross + stats_u["lse"] - stats_b["lse"]
        stats_b["kl"] = kl.clamp_min(0.0)
        stats_u.pop("p_dot_z")
        parts["base"].append(stats_b)
        parts["unlearned"].append(stats_u)
    return {
        side: {key: torch.cat([p[key] for p in chunks]) for key in chunks[0] if key != "lse"}
        for side, chunks in parts.items()
    }


def _chunk_statistics(
    z: torch.Tensor, targets: torch.Tensor, top_k: int
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Everything from raw logits, with one exp pass: e = exp(z − max), lse = max + log Σe, p = e / Σe.

    No [rows, V] log-prob or probability tensor is materialised; the maximum comes from the top-k.
    Returns the statistics and (e, Σe), which the caller needs for the KL against the other model.
    """
    top = z.topk(max(top_k, 1), dim=-1)
    peak = top.values[:, :1]
    e = torch.exp(z - peak)
    total = e.sum(dim=-1)
    lse = peak[:, 0] + total.log()
    target_z = z.gather(1, targets[:, None])
    p_dot_z = torch.linalg.vecdot(e, z) / total
    stats = {
        "target_logp": target_z[:, 0] - lse,
        "rank": (z > target_z).sum(dim=-1) + 1,
        "entropy": lse - p_dot_z,
        "top_ids": top.indices[:, :top_k],
        "top_logp": top.values[:, :top_k] - lse[:, None],
        "lse": lse,
        "p_dot_z": p_dot_z,
    }
    return stats, (e, total)


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
    chat: bool
    context_tokens: list[str]
    tokens: list[TokenShift]
    truncated: bool = False

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
    chat: bool = False,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[ProbeResult]:
    """Score each request under both models: one forward pass per model per batch."""
    if not requests:
        raise UserError("nothing to score")
    check_range(top_k, 0, MAX_TOP_K, "top_k")
    check_range(batch_size, 1, MAX_BATCH_SIZE, "batch size")
    limit = max_length or pair.context_length
    encoded = [
        r if isinstance(r, Encoded) else encode(pair.tokenizer, r.prompt, r.answer, chat, limit) for r in requests
    ]
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
            context_texts = _token_texts(pair.tokenizer, context_ids)
            context = [context_texts[i] for i in context_ids]
            results.append(ProbeResult(prompt, answer, chat, context, tokens, row.truncated))
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
    return _to_shifts(pair.tokenizer, batch, stats)


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
            if not stacked:  # LoRA variants and non-linear LoRA layers: PEFT's own mixed batch
                inputs["adapter_names"] = [names[0]] * rows + [names[1]] * rows
            logits = model(**inputs).logits
        logits = logits if logits.dim() == 2 else logits[keep]
    half = len(batch.targets)
    return {"base": logits[:half], "unlearned": logits[half:]}


def _to_shifts(tokenizer: Any, batch: Batch, stats: dict[str, dict[str, torch.Tensor]]) -> list[list[TokenShift]]:
    cols = {
        f"{key}_{side}": values.cpu().tolist()
        for side, side_stats in stats.items()
        for key, values in side_stats.items()
    }
    targets = batch.targets.cpu().tolist()
    texts = _token_texts(tokenizer, targets + [i for side in SIDES for ids in cols[f"top_ids_{side}"] for i in ids])
    out: list[list[TokenShift]] = []
    i = 0
    for row in batch.rows:
        tokens = []
        for position in range(row.score_from, len(row.input_ids)):
            lp_b, lp_u = cols["target_logp_base"][i], cols["target_logp_unlearned"][i]
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


def _token_texts(tokenizer: Any, ids: Sequence[int]) -> dict[int, str]:
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
    chat: bool
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
    chat: bool = True,
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
