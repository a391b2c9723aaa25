"""ROUGE: greedy generation from each question, scored against its answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from core.evaluation import metrics
from core.evaluation.scores import Unit, context_length, pad_token_id
from core.evaluation.settings import EvalSettings
from core.evaluation.split_metrics import prefixed
from core.scoring.encoding import encode
from core.scoring.templates import Template


def stop_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """The token ids that end a generation: the model's configured EOS ids and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def generate_greedy(
    model: torch.nn.Module,
    prompts: list[list[int]],
    pad_id: int,
    stop_ids: list[int],
    max_new_tokens: int,
    pad_mask: bool = False,
) -> list[list[int]]:
    """Greedy continuations of left-padded prompts in one `generate` call, each cut at its first stop token.
    `pad_mask` masks every pad-token id in the prompts, as open-unlearning's collator does."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    if pad_mask:
        mask = (ids != pad_id).long()
    with torch.inference_mode():
        out = model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_id,
            eos_token_id=stop_ids,
        )
    new = out[:, width:].cpu().tolist()
    return [next((row[:i] for i, token in enumerate(row) if token in stop_ids), row) for row in new]


def generate_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    settings: EvalSettings,
    max_new_tokens: int,
    tick: Callable[[], None] = lambda: None,
) -> list[str]:
    """Greedy continuations of token prompts, decoded without special tokens, in prompt order: batches of
    `settings.generation_batch_size`, longest prompts first (least padding), `tick` after each batch. ROUGE,
    KnowMem and VerbMem all generate here."""
    pad_id, stops = pad_token_id(tokenizer), stop_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = [""] * len(prompts)
    for start in range(0, len(order), settings.generation_batch_size):
        chunk = order[start : start + settings.generation_batch_size]
        batch = [prompts[i] for i in chunk]
        for i, new in zip(
            chunk, generate_greedy(model, batch, pad_id, stops, max_new_tokens, settings.pad_mask), strict=True
        ):
            texts[i] = tokenizer.decode(new, skip_special_tokens=True)
        tick()
    return texts


def _generation_records(
    model: torch.nn.Module,
    tokenizer: Any,
    units: list[Unit],
    settings: EvalSettings,
    tick: Callable[[], None],
    template: Template,
) -> dict[int, dict[str, Any]]:
    """Per unit position: the greedy generation's ROUGE scores against the answer, with input, ground truth and
    generation, and its scores against the paraphrased and the perturbed answers (PARA / PERT ROUGE)."""
    limit = context_length(model, tokenizer, settings) - settings.max_new_tokens
    prompts = [
        encode(tokenizer, unit.item.question, None, max_length=limit, template=template).input_ids for unit in units
    ]
    texts = generate_texts(model, tokenizer, prompts, settings, settings.max_new_tokens, tick)
    return {
        unit.position: _records(unit, text.strip(), tokenizer.decode(prompt, skip_special_tokens=True))
        for unit, prompt, text in zip(units, prompts, texts, strict=True)
    }


def _records(unit: Unit, text: str, prompt: str) -> dict[str, Any]:
    """The generation's ROUGE records against the answer, the paraphrased answer and (one per wrong answer, in
    lists) the perturbed answers, each with input, ground truth and generation, as open-unlearning writes them."""
    item = unit.item
    truths = {"answer": item.answer, "PARA": item.paraphrased_answer}
    records = {
        kind: metrics.rouge_scores(text, truth) | {"input": prompt, "ground_truth": truth, "generation": text}
        for kind, truth in truths.items()
        if truth is not None
    }
    if item.perturbed_answer:
        scores = [metrics.rouge_scores(text, wrong) for wrong in item.perturbed_answer]
        count = len(scores)
        records["PERT"] = {key: [score[key] for score in scores] for key in scores[0]} | {
            "input": [prompt] * count,
            "ground_truth": list(item.perturbed_answer),
            "generation": [text] * count,
        }
    return records


def _rouge_entry(chosen: list[Unit], values: list[dict[str, Any]]) -> dict[str, Any]:
    """One ROUGE metric: ROUGE-L recall averaged per item (over its wrong answers for PERT), then over items."""
    agg = float(np.mean([np.mean(value["rougeL_recall"]) for value in values]))
    return {
        "agg_value": agg,
        "value_by_index": {str(unit.item.index): value for unit, value in zip(chosen, values, strict=True)},
    }


def rouge_logs(
    model: torch.nn.Module,
    tokenizer: Any,
    units: list[Unit],
    settings: EvalSettings,
    tick: Callable[[], None],
    template: Template,
) -> dict[str, Any]:
    """Greedy generation from each question, scored against the answer (`<split>_Q_A_ROUGE`, TOFU aggregates
    ROUGE-L recall) and, on the forget and retain splits, against the paraphrased answer and the perturbed ones
    (`_Q_A_PARA_ROUGE`, `_Q_A_PERT_ROUGE`, as open-unlearning's configs of those names)."""
    records = _generation_records(model, tokenizer, units, settings, tick, template)
    logs = {}
    for split in dict.fromkeys(unit.split for unit in units):
        chosen = [unit for unit in units if unit.split == split]
        for kind, suffix in (("answer", "Q_A_ROUGE"), ("PARA", "Q_A_PARA_ROUGE"), ("PERT", "Q_A_PERT_ROUGE")):
            wanted = split in ("forget", "retain") or kind == "answer"
            if wanted and all(kind in records[unit.position] for unit in chosen):
                values = [records[unit.position][kind] for unit in chosen]
                logs[prefixed(split, suffix)] = _rouge_entry(chosen, values)
    return logs
