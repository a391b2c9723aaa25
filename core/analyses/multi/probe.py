"""The probe across many models: every unlearned model against the one base, each result the two-model probe of
that pair (core.analyses.probe), computed with the base side run once per batch and every adapter on one backbone
in one stacked pass (core.models.adapters.n_sided_lora) instead of one pass per model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.analyses.multi.models import ModelSet
from core.analyses.probe import DEFAULT_TOP_K, ProbeRequest, ProbeResult, pair_statistics, to_shifts, token_texts
from core.common.errors import UserError
from core.common.limits import (
    FORWARD_ACTIVATION_FACTOR,
    MAX_BATCH_SIZE,
    MAX_TOP_K,
    activation_bytes,
    available_bytes,
    check_range,
    ensure_fits,
    model_shape,
)
from core.models.adapters import n_sided_lora
from core.scoring.encoding import Batch, Encoded, collate, encode
from core.scoring.forward import selected_logits
from core.scoring.templates import Template

MEMORY_SHARE = 0.5  # a stacked pass may take this share of the free memory; more sides are split over passes


@dataclass
class MultiProbeResult:
    """One prompt (+ answer) under the base and N unlearned models: `results[i]` is the probe of base vs
    `models[i]`, as `python -m core probe` gives it for that pair."""

    models: list[str]
    results: list[ProbeResult]

    def to_dict(self) -> dict[str, Any]:
        return {"models": list(self.models), "results": [result.to_dict() for result in self.results]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiProbeResult:
        return cls(list(data["models"]), [ProbeResult.from_dict(r) for r in data["results"]])

    def answer_logprobs(self) -> list[float]:
        """The answer's log-prob under each unlearned model (sum over the scored tokens)."""
        return [result.answer_logprob_unlearned for result in self.results]


def probe_many(
    models: ModelSet,
    request: ProbeRequest,
    chat: bool | str | Template = False,
    top_k: int = DEFAULT_TOP_K,
    progress: Callable[[float], None] | None = None,
    score_end: bool = False,
) -> MultiProbeResult:
    """Probe one prompt (+ answer) under the base and every model of the set (`chat`, `score_end`: as for
    core.analyses.probe.score)."""
    per_model = score_many(models, [request], chat=chat, top_k=top_k, progress=progress, score_end=score_end)
    return MultiProbeResult(models.labels, [results[0] for results in per_model])


def score_many(
    models: ModelSet,
    requests: Sequence[ProbeRequest],
    chat: bool | str | Template = False,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 16,
    progress: Callable[[float], None] | None = None,
    score_end: bool = False,
) -> list[list[ProbeResult]]:
    """`core.analyses.probe.score` of every pair (base, model i): result[i][j] is request j under pair i. `chat` is
    the template (a name, file or Template; True / False: the chat template / plain), `score_end` also scores its
    end-of-turn tokens and EOS, as there."""
    if not requests:
        raise UserError("nothing to score")
    check_range(top_k, 0, MAX_TOP_K, "top_k")
    check_range(batch_size, 1, MAX_BATCH_SIZE, "batch size")
    pair = models.pair(0)
    limit = pair.context_length
    encoded = [encode(models.tokenizer, r.prompt, r.answer, chat, limit, score_end=score_end) for r in requests]
    name = chat.name if isinstance(chat, Template) else chat
    out: list[list[ProbeResult]] = [[] for _ in models.entries]
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        batch = collate(rows, models.tokenizer.pad_token_id, models.device)
        logits = side_logits(models, batch)
        for i in range(len(models.entries)):
            stats = pair_statistics(logits[0], logits[i + 1], batch.targets, top_k)
            shifts = to_shifts(models.tokenizer, batch, stats)
            for offset, (row, tokens) in enumerate(zip(rows, shifts, strict=True)):
                request = requests[start + offset]
                texts = token_texts(models.tokenizer, row.input_ids[: row.score_from])
                context = [texts[t] for t in row.input_ids[: row.score_from]]
                result = ProbeResult(
                    request.prompt, request.answer, name, context, tokens, row.truncated, row.end_tokens
                )
                out[i].append(result)
        if progress:
            progress(min(1.0, (start + len(rows)) / len(encoded)))
    return out


def side_logits(models: ModelSet, batch: Batch) -> list[torch.Tensor]:
    """Every side's logits [scored tokens, V] at the batch's scored positions (side 0: the base): the sides on one
    PEFT backbone in stacked passes of as many sides as fit, the others one pass each."""
    logits: list[torch.Tensor | None] = [None] * len(models.sides)
    for group in models.groups():
        if len(group) == 1:
            with models.use(group[0]) as model, torch.no_grad():
                logits[group[0]] = selected_logits(model, batch)
            continue
        per_pass = sides_per_pass(models, batch.rows, len(group))
        for start in range(0, len(group), per_pass):
            chunk = group[start : start + per_pass]
            for index, values in zip(chunk, stacked_logits(models, chunk, batch), strict=True):
                logits[index] = values
    return [values for values in logits if values is not None]


def stacked_logits(models: ModelSet, sides: list[int], batch: Batch) -> list[torch.Tensor]:
    """The logits of `sides` (adapters on one PEFT backbone) from one pass of the batch stacked once per side; one
    pass per side where the adapters are not plain LoRA (n_sided_lora declines)."""
    model = models.sides[sides[0]].model
    names = [models.sides[i].adapter or "__base__" for i in sides]
    k = len(sides)
    stacked = Batch(
        batch.input_ids.repeat(k, 1), batch.attention_mask.repeat(k, 1), batch.predict_mask.repeat(k, 1),
        batch.targets.repeat(k), batch.rows * k,
    )  # fmt: skip
    with models.hold(sides[0]), torch.no_grad(), n_sided_lora(model, names) as joined:
        if joined:
            return list(selected_logits(model.get_base_model(), stacked).chunk(k))
    out = []
    for i in sides:
        with models.use(i) as side_model, torch.no_grad():
            out.append(selected_logits(side_model, batch))
    return out


def sides_per_pass(models: ModelSet, rows: list[Encoded], sides: int) -> int:
    """How many sides one stacked pass takes: all of them where the pass's working set (one layer's activations over
    the stacked batch and every side's logits at the scored positions) fits MEMORY_SHARE of the free memory, else
    fewer; one at least (that one is then checked as the two-model probe checks its batch)."""
    with models.use(0) as model:
        shape = model_shape(model)
    itemsize = torch.empty((), dtype=models.dtype).element_size()
    width = max(len(row.input_ids) for row in rows)
    scored = sum(len(row.input_ids) - row.score_from for row in rows)

    def need(k: int) -> int:
        working = activation_bytes(k * len(rows), width, shape.hidden, 1, itemsize, FORWARD_ACTIVATION_FACTOR)
        return working + (k + 1) * scored * shape.vocab * itemsize

    free = available_bytes(models.device)
    if free is None:
        return sides
    k = sides
    while k > 1 and need(k) > MEMORY_SHARE * free:
        k -= 1
    ensure_fits(need(k), models.device, f"scoring {len(rows)} texts of up to {width} tokens under {k} models")
    return k
