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


def _stop_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def generate_greedy(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, stop_ids: list[int], max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuations of left-padded prompts in one `generate` call, each cut at its first stop token."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
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


def _generation_records(
    model: torch.nn.Module, tokenizer: Any, units: list[Unit], settings: EvalSettings, tick: Callable[[], None]
) -> dict[int, dict[str, Any]]:
    """Per unit position: the ROUGE scores of its greedy generation, with input, ground truth and generation."""
    pad_id, stops = pad_token_id(tokenizer), _stop_ids(model, tokenizer)
    limit = context_length(model, tokenizer, settings) - settings.max_new_tokens
    prompts = {unit.position: encode(tokenizer, unit.item.question, None, settings.chat, limit) for unit in units}
    ordered = sorted(units, key=lambda unit: -len(prompts[unit.position].input_ids))
    records: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ordered), settings.generation_batch_size):
        batch = ordered[start : start + settings.generation_batch_size]
        ids = [prompts[unit.position].input_ids for unit in batch]
        generated = generate_greedy(model, ids, pad_id, stops, settings.max_new_tokens)
        for unit, prompt, new in zip(batch, ids, generated, strict=True):
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            records[unit.position] = metrics.rouge_scores(text, unit.item.answer) | {
                "input": tokenizer.decode(prompt, skip_special_tokens=True),
                "ground_truth": unit.item.answer,
                "generation": text,
            }
        tick()
    return records


def rouge_logs(
    model: torch.nn.Module, tokenizer: Any, units: list[Unit], settings: EvalSettings, tick: Callable[[], None]
) -> dict[str, Any]:
    """Greedy generation from each question, scored against the answer (TOFU aggregates ROUGE-L recall)."""
    records = _generation_records(model, tokenizer, units, settings, tick)
    logs = {}
    for split in dict.fromkeys(unit.split for unit in units):
        chosen = [unit for unit in units if unit.split == split]
        values = [records[unit.position] for unit in chosen]
        agg = float(np.mean([value["rougeL_recall"] for value in values]))
        logs[prefixed(split, "Q_A_ROUGE")] = {
            "agg_value": agg,
            "value_by_index": {str(unit.item.index): value for unit, value in zip(chosen, values, strict=True)},
        }
    return logs
