"""MUSE's memorisation metrics computed (not only read from result files): KnowMem, ROUGE-L F1 of the greedy answer
to each question (`forget_knowmem_ROUGE`, `retain_knowmem_ROUGE`), and VerbMem, ROUGE-L F1 of the greedy
continuation of each text opening against its true continuation (`forget_verbmem_ROUGE`).

As open-unlearning's MUSE configs (configs/eval/muse_metrics/*_ROUGE.yaml @ d3d7cf9): KnowMem generates up to 32
tokens and cuts at its stop words ("\\n\\n", "\\nQuestion", "Question:"), with MUSE's in-context examples
(`<split>_knowmem_icl.jsonl`, MUSE's `forget_qa_icl` / `retain_qa_icl`) put before each question as earlier turns
of the conversation (`Template.prompt_ids(..., examples)`, as its `QADataset` with `few_shot_dataset_hf_args` and
`preprocess_chat_instance` build them); without that file the question is asked alone. VerbMem generates up to 128
tokens from the opening tokenised as plain text (no template, special tokens as the tokenizer adds them). Both
generations are stripped before scoring, as its `eval_text_similarity` strips them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.data.muse import MuseData
from core.evaluation import metrics
from core.evaluation.rouge import generate_texts
from core.evaluation.scores import context_length
from core.evaluation.settings import EvalSettings
from core.scoring.templates import Template

KNOWMEM_TOKENS = 32
KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")
VERBMEM_TOKENS = 128


def _cut(text: str, stopwords: tuple[str, ...]) -> str:
    for word in stopwords:
        text = text.split(word)[0]
    return text.strip()


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
        icl = muse.knowmem_icl.get(split)
        examples = [(item.question, item.answer) for item in icl.items] if icl is not None else []
        prompts = [template.prompt_ids(tokenizer, item.question, examples)[-(limit - KNOWMEM_TOKENS) :] for item in qa]
        texts = [
            _cut(text, KNOWMEM_STOPWORDS)
            for text in generate_texts(model, tokenizer, prompts, settings, KNOWMEM_TOKENS)
        ]
        records = [
            metrics.rouge_scores(text, item.answer)
            | {"input": tokenizer.decode(prompt, skip_special_tokens=True), "ground_truth": item.answer}
            | {"generation": text}
            for item, prompt, text in zip(qa, prompts, texts, strict=True)
        ]
        logs[f"{split}_knowmem_ROUGE"] = _entry(records)
    if muse.verbmem:
        prompts = [list(tokenizer(prompt).input_ids)[-(limit - VERBMEM_TOKENS) :] for prompt, _ in muse.verbmem]
        texts = [text.strip() for text in generate_texts(model, tokenizer, prompts, settings, VERBMEM_TOKENS)]
        records = [
            metrics.rouge_scores(text, truth) | {"input": prompt, "ground_truth": truth, "generation": text}
            for (prompt, truth), text in zip(muse.verbmem, texts, strict=True)
        ]
        logs["forget_verbmem_ROUGE"] = _entry(records)
    return logs
