"""MUSE's memorisation metrics computed (not only read from result files): KnowMem, ROUGE-L F1 of the greedy answer
to each question (`forget_knowmem_ROUGE`, `retain_knowmem_ROUGE`), and VerbMem, ROUGE-L F1 of the greedy
continuation of each text opening against its true continuation (`forget_verbmem_ROUGE`).

As open-unlearning's MUSE configs (configs/eval/muse_metrics/*_ROUGE.yaml @ d3d7cf9): KnowMem generates up to 32
tokens and cuts at its stop words ("\\n\\n", "\\nQuestion", "Question:"); VerbMem generates up to 128 tokens from
the opening tokenised as plain text (no template, special tokens as the tokenizer adds them). One difference,
listed in docs/FIDELITY.md: open-unlearning's KnowMem puts MUSE's in-context examples before each question; here
the question is asked alone (a folder's knowmem file has no in-context split).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.data.muse import MuseData
from core.evaluation import metrics
from core.evaluation.rouge import _stop_ids, generate_greedy
from core.evaluation.scores import context_length, pad_token_id
from core.evaluation.settings import EvalSettings
from core.scoring.encoding import encode
from core.scoring.templates import Template

KNOWMEM_TOKENS = 32
KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")
VERBMEM_TOKENS = 128


def _cut(text: str, stopwords: tuple[str, ...]) -> str:
    for word in stopwords:
        text = text.split(word)[0]
    return text.strip()


def _generate(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], settings: EvalSettings, tokens: int):
    pad_id, stops = pad_token_id(tokenizer), _stop_ids(model, tokenizer)
    out = []
    for start in range(0, len(prompts), settings.generation_batch_size):
        batch = prompts[start : start + settings.generation_batch_size]
        out += generate_greedy(model, batch, pad_id, stops, tokens, settings.pad_mask)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in out]


def _entry(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "agg_value": float(np.mean([record["rougeL_f1"] for record in records])),
        "value_by_index": {str(i): record for i, record in enumerate(records)},
    }


def muse_logs(
    model: torch.nn.Module, tokenizer: Any, muse: MuseData, template: Template, settings: EvalSettings
) -> dict[str, Any]:
    """KnowMem on each knowmem split present and VerbMem when the folder has VerbMem pairs."""
    limit = context_length(model, tokenizer, settings)
    logs = {}
    for split, qa in muse.knowmem.items():
        prompts = [encode(tokenizer, item.question, None, max_length=limit - KNOWMEM_TOKENS, template=template)
                   for item in qa]  # fmt: skip
        texts = _generate(model, tokenizer, [p.input_ids for p in prompts], settings, KNOWMEM_TOKENS)
        records = [
            metrics.rouge_scores(_cut(text, KNOWMEM_STOPWORDS), item.answer)
            | {"input": item.question, "ground_truth": item.answer, "generation": _cut(text, KNOWMEM_STOPWORDS)}
            for item, text in zip(qa, texts, strict=True)
        ]
        logs[f"{split}_knowmem_ROUGE"] = _entry(records)
    if muse.verbmem:
        prompts = [list(tokenizer(prompt).input_ids)[-(limit - VERBMEM_TOKENS) :] for prompt, _ in muse.verbmem]
        texts = _generate(model, tokenizer, prompts, settings, VERBMEM_TOKENS)
        records = [
            metrics.rouge_scores(text.strip(), truth) | {"input": prompt, "ground_truth": truth, "generation": text}
            for (prompt, truth), text in zip(muse.verbmem, texts, strict=True)
        ]
        logs["forget_verbmem_ROUGE"] = _entry(records)
    return logs
