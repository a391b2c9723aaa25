"""The MIA attacks that need more than the shared forward pass (core.evaluation.mia_models), on tiny random models:
each per-item score against a plain computation (an unbatched float32 forward pass, the log-softmax in float64; for
the gradient norm a float64 copy of the model and plain autograd), each AUC against sklearn's roc_auc_score with
open-unlearning's labels (forget 0, holdout 1: src/evals/metrics/mia/utils.py @ d3d7cf9), and the reference attack
against the target itself (every score ≈ 0) through `evaluate --reference SPEC`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from tiny_models import EPS32, TinyTokenizer, logit_tolerance, make_tiny_llama, save_tiny_model_dir

from core.data.qa import QADataset, QAItem, SplitData
from core.evaluation.evaluate import EvalSettings, evaluate, evaluate_model
from core.evaluation.mia import reference_logs
from core.evaluation.mia_models import reference_losses
from core.models.loading import load_tokenizer
from core.models.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

SPLITS = ("forget", "holdout")
JOBS = ["baker", "pilot", "poet", "cook", "judge"]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))


def items(start: int, count: int, words: bool = False) -> list[QAItem]:
    if words:  # save_tiny_model_dir's word-level vocabulary
        return [QAItem(index=i, question=f"w{i} w{i + 1} w{i + 2}", answer=f"w{i + 3} w{i + 4}")
                for i in range(start, start + count)]  # fmt: skip
    return [QAItem(index=i, question=f"What does person {i} do?", answer=f"Person {i} is a {JOBS[i % 5]}.")
            for i in range(start, start + count)]  # fmt: skip


def mia_splits(words: bool = False) -> SplitData:
    return SplitData(forget=QADataset("t", "forget", items(0, 4, words)),
                     holdout=QADataset("t", "holdout", items(20, 4, words)))  # fmt: skip


# ------------------------------------------------------------------------------------------ plain reference


def plain_ids(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
    """open-unlearning's row for TinyTokenizer written out: the chat prompt with its generation prompt, the answer's
    tokens, the EOS; every token after the prompt is scored."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False).input_ids
    return prompt + tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id], len(prompt)


def plain_logp(model: torch.nn.Module, ids: list[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored tokens' log-probabilities (log-softmax over the full vocabulary, in the logits' dtype promoted
    to float64) and the logits at the scoring positions."""
    logits = model(torch.tensor([ids])).logits[0, start - 1 : len(ids) - 1]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return logp.gather(1, torch.tensor(ids[start:])[:, None])[:, 0], logits


def plain_grad_norm(model64: torch.nn.Module, ids: list[int], start: int) -> float:
    """open-unlearning's gradient-norm score (src/evals/metrics/mia/gradnorm.py): the loss is the mean negative
    log-prob of the scored tokens but the final EOS; the score is the mean over parameter tensors of each gradient's
    2-norm. Here in float64, with torch.autograd.grad."""
    logp, _ = plain_logp(model64, ids, start)
    loss = -logp[:-1].mean()  # the row ends with the EOS (plain_ids appends it)
    params = list(model64.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(torch.stack([g.norm(p=2) for g in grads if g is not None]).mean())


def labelled(forget: list[float], holdout: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """open-unlearning's mia_auc labels: forget members 0, holdout non-members 1."""
    return np.array([0] * len(forget) + [1] * len(holdout)), np.array(forget + holdout, dtype=float)


def entry_scores(entry: dict[str, Any], data: SplitData) -> dict[str, list[float]]:
    return {split: [entry[split]["value_by_index"][str(item.index)]["score"] for item in getattr(data, split)]
            for split in SPLITS}  # fmt: skip


def assert_auc_is_sklearns(entry: dict[str, Any], stored: dict[str, list[float]]) -> None:
    """The AUC is a function of the scores' order, and two plain scores closer than their tolerance may come out of
    the code's float32 arithmetic in either order on another machine: so the AUC is checked against sklearn on the
    scores the code stored (each checked against the plain computation by the caller)."""
    expected = roc_auc_score(*labelled(stored["forget"], stored["holdout"]))
    assert entry["auc"] == entry["agg_value"] == pytest.approx(expected, abs=1e-12)
    for split in SPLITS:
        assert entry[split]["agg_value"] == pytest.approx(np.mean(stored[split]), rel=4 * EPS32, abs=1e-12)


# ------------------------------------------------------------------------------------------ gradient norm


def test_gradnorm_scores_equal_plain_autograd_and_its_auc_sklearns() -> None:
    model, tokenizer, data = make_tiny_llama(seed=0), TinyTokenizer(), mia_splits()
    flags = [p.requires_grad for p in model.parameters()]
    logs = evaluate_model(model, tokenizer, data, EvalSettings(gradnorm=True, batch_size=4))
    assert [p.requires_grad for p in model.parameters()] == flags  # restored
    assert all(p.grad is None for p in model.parameters())
    entry = logs["mia_gradnorm"]
    stored = entry_scores(entry, data)
    model64 = copy.deepcopy(model).double()
    config = model.config
    width = max(config.hidden_size, config.intermediate_size)
    # The code's gradients are float32: the forward pass through L layers and the backward pass through them again
    # (plus the head) each sum at most W = max(hidden, intermediate) products (the rows have < W tokens), so each
    # gradient tensor is within ~(2L + 1)·W·eps32 of its scale of the float64 one; its norm, and the mean of the
    # norms, within that relatively, doubled for the code's and torch's own differing reduction orders.
    rel = 2 * (2 * config.num_hidden_layers + 1) * width * EPS32
    for split in SPLITS:
        for item, got in zip(getattr(data, split), stored[split], strict=True):
            ids, start = plain_ids(tokenizer, item.question, item.answer)
            assert got == pytest.approx(plain_grad_norm(model64, ids, start), rel=rel), (split, item.index)
    assert_auc_is_sklearns(entry, stored)


# ------------------------------------------------------------------------------------------ reference model


def loss_and_tolerance(model: torch.nn.Module, ids: list[int], start: int) -> tuple[float, float]:
    """The plain average loss, and how far the code's may lie from it: its logits within τ (logit_tolerance) of
    these, so each log-prob (z_y − logsumexp z, each term moving ≤ τ) within 2τ, and so their mean; plus the
    float32 rounding of the log-softmax and the mean (a few eps32 of the loss)."""
    with torch.no_grad():
        logp, logits = plain_logp(model, ids, start)
    loss = float(-logp.mean())
    return loss, 2 * logit_tolerance(model, logits) + 8 * EPS32 * abs(loss)


def test_reference_scores_are_target_minus_reference_losses_and_auc_sklearns() -> None:
    target, reference, tokenizer, data = make_tiny_llama(seed=0), make_tiny_llama(seed=1), TinyTokenizer(), mia_splits()
    settings = EvalSettings(batch_size=4)
    template = settings.template_for(tokenizer)
    logs = evaluate_model(target, tokenizer, data, settings, template=template)
    entry = reference_logs(logs, reference_losses(reference, tokenizer, data, template, settings))["mia_reference"]
    stored = entry_scores(entry, data)
    for split in SPLITS:
        for item, got in zip(getattr(data, split), stored[split], strict=True):
            ids, start = plain_ids(tokenizer, item.question, item.answer)
            (mine, tol_t), (theirs, tol_r) = (
                loss_and_tolerance(target, ids, start),
                loss_and_tolerance(reference, ids, start),
            )
            assert abs(mine - theirs) > 0  # two different models: a non-trivial difference to check
            assert got == pytest.approx(mine - theirs, abs=tol_t + tol_r), (split, item.index)
    assert_auc_is_sklearns(entry, stored)


def test_reference_equal_to_the_target_scores_zero_through_evaluate(tmp_path: Path) -> None:
    """`evaluate --reference SPEC` with SPEC the evaluated model itself: each score is the model's loss minus its
    own loss on the same tokens (scored in other batches: the MIA splits alone), so 0 up to two float32
    computations of the same logits."""
    folder = save_tiny_model_dir(tmp_path / "m", seed=0)
    data = mia_splits(words=True)
    result = evaluate([str(folder)], data, settings=EvalSettings(batch_size=3, reference=str(folder)),
                      cache=False)  # fmt: skip
    (evaluation,) = result.evaluations
    logs = evaluation.logs
    entry = logs["mia_reference"]
    stored = entry_scores(entry, data)
    loss = entry_scores(logs["mia_loss"], data)
    model = make_tiny_llama(seed=0, vocab_size=len(load_tokenizer(ModelSpec.parse(str(folder))).get_vocab()))
    with torch.no_grad():
        scale = float(model(torch.arange(model.config.vocab_size)[None]).logits.abs().max())
    for split in SPLITS:
        for got, own in zip(stored[split], loss[split], strict=True):
            # each log-prob of the two passes within 2τ of the other (see loss_and_tolerance), τ at the logits' scale
            assert abs(got) <= 2 * logit_tolerance(model, torch.tensor(2 * scale)) + 8 * EPS32 * own
    assert_auc_is_sklearns(entry, stored)
