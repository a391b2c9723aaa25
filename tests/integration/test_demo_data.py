"""The demo data against the real SmolLM2: it knows the world facts and does not know the invented people.

The scoring here is a plain reference implementation (independent of core/): chat template with user = question
and assistant = answer, teacher-forced mean log-prob of the answer tokens, one right-padded forward pass per batch.
"""

from __future__ import annotations

import logging

import pytest
import torch

from core.data.qa import QAItem, load_demo_splits

log = logging.getLogger(__name__)

BATCH = 32


@pytest.fixture(scope="module")
def model_and_tokenizer(embedded_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def mean_answer_logprobs(model, tokenizer, pairs: list[tuple[str, str]]) -> list[float]:
    """Mean log-prob of each answer's tokens given its chat-formatted question (prompt tokens masked out)."""
    sequences, starts = [], []
    for question, answer in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        sequences.append(prompt_ids + tokenizer(answer, add_special_tokens=False).input_ids)
        starts.append(len(prompt_ids))
    scores = []
    with torch.inference_mode():
        for begin in range(0, len(sequences), BATCH):
            batch = sequences[begin : begin + BATCH]
            ids = torch.full((len(batch), max(map(len, batch))), tokenizer.pad_token_id)
            mask = torch.zeros_like(ids)
            for row, sequence in enumerate(batch):
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            for row, sequence in enumerate(batch):
                start = starts[begin + row]
                # logits at position t predict token t + 1: the answer tokens start..end-1 come from start-1..end-2
                logprobs = torch.log_softmax(logits[row, start - 1 : len(sequence) - 1].float(), dim=-1)
                targets = ids[row, start : len(sequence)]
                scores.append(logprobs.gather(-1, targets[:, None]).mean().item())
    return scores


def preference_accuracy(model, tokenizer, items: list[QAItem], true_field: str) -> tuple[float, list[float]]:
    """Fraction of items whose true answer out-scores every perturbed answer, and each item's margin."""
    pairs = [(item.question, text) for item in items for text in (getattr(item, true_field), *item.perturbed_answer)]
    scores = mean_answer_logprobs(model, tokenizer, pairs)
    margins, position = [], 0
    for item in items:
        group = scores[position : position + 1 + len(item.perturbed_answer)]
        margins.append(group[0] - max(group[1:]))
        position += len(group)
    return sum(margin > 0 for margin in margins) / len(items), margins


def test_base_model_knows_the_world_facts(model_and_tokenizer):
    items = load_demo_splits().world_facts.items
    accuracy, margins = preference_accuracy(*model_and_tokenizer, items, "answer")
    log.info("world facts: %d items, accuracy %.3f, min margin %.3f", len(items), accuracy, min(margins))
    assert accuracy >= 0.9


def test_base_model_does_not_know_the_invented_people(model_and_tokenizer):
    demo = load_demo_splits()
    items = [*demo.forget, *demo.holdout]
    # Wrong answers share the paraphrased answer's form, so only the fact differs (TOFU's truth-ratio pair).
    accuracy, _ = preference_accuracy(*model_and_tokenizer, items, "paraphrased_answer")
    chance = 1 / (1 + len(items[0].perturbed_answer))
    log.info("forget+holdout: %d items, accuracy %.3f (chance %.2f)", len(items), accuracy, chance)
    assert accuracy <= 0.5


def test_answers_are_short(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    demo = load_demo_splits()
    lengths = [
        len(tokenizer(text, add_special_tokens=False).input_ids)
        for dataset in demo.splits().values()
        for item in dataset
        for text in (item.answer, item.paraphrased_answer or "", *item.perturbed_answer)
    ]
    assert max(lengths) <= 28
