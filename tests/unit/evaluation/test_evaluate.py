"""Evaluation on tiny random models: every per-item number against a plain unbatched computation, batching and
forward-pass counts, the cache, the oracle, open-unlearning files read back by core.evaluation.ingest, runs and the
CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from rouge_score import rouge_scorer
from scipy import stats
from tiny_models import TinyTokenizer, logit_tolerance, make_tiny_llama, save_tiny_model_dir, top_margin

from core.cli.evaluate import add_parser as add_evaluate_parser
from core.common.cache import atomic_write_json
from core.common.errors import UserError
from core.data.qa import QADataset, QAItem, SplitData
from core.evaluation.derived import derived_logs, folder_reference
from core.evaluation.evaluate import EvalModel, EvalResult, EvalSettings, evaluate, evaluate_run
from core.evaluation.ingest import ingest
from core.evaluation.results import EXAMPLE_RESULTS
from core.evaluation.scores import plan_batches, plan_units
from core.models.loading import load_tokenizer
from core.models.spec import ModelSpec
from core.scoring.encoding import encode
from core.scoring.statistics import token_statistics as next_token_statistics

EPS = 1e-10
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def qa_items(start: int, count: int, paraphrase: bool = True) -> list[QAItem]:
    people = ["baker", "pilot", "poet", "cook", "judge"]
    return [
        QAItem(
            index=i,
            question=f"What does person {i} do?",
            answer=f"Person {i} is a {people[i % 5]}.",
            paraphrased_answer=f"A {people[i % 5]}, that is {i}." if paraphrase else None,
            perturbed_answer=[f"Person {i} is a {people[(i + k) % 5]}!" for k in (1, 2, 3)],
        )
        for i in range(start, start + count)
    ]


def make_splits(size: int = 3) -> SplitData:
    return SplitData(
        forget=QADataset("t", "forget", qa_items(0, size)),
        retain=QADataset("t", "retain", qa_items(10, size + 1)),
        holdout=QADataset("t", "holdout", qa_items(20, size)),
        world_facts=QADataset("t", "world_facts", qa_items(30, size, paraphrase=False)),
    )


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))


@pytest.fixture
def splits() -> SplitData:
    return make_splits()


@pytest.fixture
def tokenizer() -> TinyTokenizer:
    return TinyTokenizer()


def count_forwards(model: torch.nn.Module) -> list[int]:
    """Wrap the model's forward with a counter; returns the one-element list it increments."""
    calls = [0]
    forward = model.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = counted
    return calls


# ------------------------------------------------------------------------------------------ plain reference


def plain_ids(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
    """The row as open-unlearning's preprocess_chat_instance builds it for this tokenizer, written out: the chat
    prompt with its generation prompt, the answer's tokens (TinyTokenizer's template drops the assistant's turn, so
    they follow the prompt as they are), and the EOS appended; everything after the prompt is scored."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False).input_ids
    return prompt + tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id], len(prompt)


def plain_row(model: torch.nn.Module, tokenizer: Any, question: str, answer: str) -> dict[str, np.ndarray]:
    """One row alone: full logits in float64, the log-softmax by hand, and what each scored position gives."""
    ids, start = plain_ids(tokenizer, question, answer)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double().numpy()
    positions = np.arange(start - 1, len(ids) - 1)
    z = logits[positions]
    logp_full = z - z.max(axis=1, keepdims=True)
    logp_full -= np.log(np.exp(logp_full).sum(axis=1, keepdims=True))
    labels = np.array(ids[start:])
    p = np.exp(logp_full)
    mu = (p * logp_full).sum(axis=1)
    sigma = np.sqrt((p * (logp_full - mu[:, None]) ** 2).sum(axis=1))
    return {"logp": logp_full[np.arange(len(labels)), labels], "argmax": z.argmax(axis=1), "labels": labels,
            "mu": mu, "sigma": sigma}  # fmt: skip


def avg_loss(row: dict[str, np.ndarray]) -> float:
    return float(-row["logp"].mean())


def without_eos(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What open-unlearning's token-wise metrics read: every scored token but the final EOS."""
    return {key: value[:-1] for key, value in row.items()}


def lowest_mean(values: np.ndarray, fraction: float = 0.4) -> float:
    return float(np.sort(values)[: max(1, int(len(values) * fraction))].mean())


def pairwise_auc(forget: list[float], holdout: list[float]) -> float:
    """P(holdout score > forget score), ties counted half: the ROC AUC with holdout as the positive class."""
    pairs = [(h > f) + 0.5 * (h == f) for f in forget for h in holdout]
    return float(np.mean(pairs))


def record(result: EvalResult, metric: str, index: int, model: str = "m") -> dict[str, Any]:
    return result.evaluation(model).logs[metric]["value_by_index"][str(index)]


def agg(result: EvalResult, metric: str, model: str = "m", step: int | None = None) -> Any:
    return result.evaluation(model, step).logs[metric]["agg_value"]


# ------------------------------------------------------------------------------------------ per-item numbers


@pytest.fixture(scope="module")
def tiny_result() -> tuple[torch.nn.Module, EvalResult]:
    model = make_tiny_llama(seed=0)
    result = evaluate([("m", model, TinyTokenizer())], make_splits(), settings=EvalSettings(batch_size=4), cache=False)
    return model, result


def test_probabilities_and_truth_ratios_match_a_plain_computation(tiny_result, tokenizer) -> None:
    model, result = tiny_result
    data = make_splits()
    prefixes = {"forget": "forget", "retain": "retain", "holdout": "holdout", "world_facts": "wf"}
    for split, qa in data.splits().items():
        prefix = prefixes[split]
        ratios = []
        for item in qa:
            answer = plain_row(model, tokenizer, item.question, item.answer)
            wrong = [avg_loss(plain_row(model, tokenizer, item.question, text)) for text in item.perturbed_answer]
            got = record(result, f"{prefix}_Q_A_Prob", item.index)
            assert got["avg_loss"] == pytest.approx(avg_loss(answer), abs=TOL)
            assert got["prob"] == pytest.approx(math.exp(-avg_loss(answer)), rel=TOL)
            pert = record(result, f"{prefix}_Q_A_PERT_Prob", item.index)
            np.testing.assert_allclose(pert["avg_loss"], wrong, atol=TOL)
            np.testing.assert_allclose(pert["prob"], np.exp(-np.array(wrong)), rtol=TOL)
            if split == "world_facts":
                true_loss = avg_loss(answer)
                p_true, p_wrong = math.exp(-true_loss), np.exp(-np.array(wrong))
                normalised = record(result, "wf_Q_A_Prob_normalised", item.index)["prob"]
                assert normalised == pytest.approx(p_true / (p_true + p_wrong.sum() + EPS), rel=TOL)
                correct = float(true_loss < min(wrong))
                # precondition: the code's losses are within TOL of these (asserted above), so its decision is this
                # one on every machine when the losses differ by more than 2·TOL
                assert abs(true_loss - min(wrong)) > 2 * TOL
                assert record(result, "world_facts/acc", item.index)["score"] == correct
            else:
                true_loss = avg_loss(plain_row(model, tokenizer, item.question, item.paraphrased_answer))
                assert record(result, f"{prefix}_Q_A_PARA_Prob", item.index)["avg_loss"] == pytest.approx(
                    true_loss, abs=TOL
                )
            ratio = math.exp(-np.mean(wrong)) / (math.exp(-true_loss) + EPS)
            name = "forget_truth_ratio" if split == "forget" else f"{prefix}_Truth_Ratio"
            assert record(result, name, item.index)["score"] == pytest.approx(ratio, rel=1e-4)
            ratios.append(ratio)
        ratios = np.array(ratios)
        expected = (
            np.mean(np.minimum(ratios, 1 / (ratios + EPS))) if split == "forget" else np.mean(np.maximum(0, 1 - ratios))
        )
        name = "forget_truth_ratio" if split == "forget" else f"{prefix}_Truth_Ratio"
        assert agg(result, name) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_mia_scores_and_auc_match_a_plain_computation(tiny_result, tokenizer) -> None:
    model, result = tiny_result
    data = make_splits()
    scores: dict[str, dict[str, list[float]]] = {}
    stored: dict[str, dict[str, list[float]]] = {}
    for split in ("forget", "holdout"):
        for item in getattr(data, split):
            row = plain_row(model, tokenizer, item.question, item.answer)
            loss = avg_loss(row)
            tokens = without_eos(row)
            z = (tokens["logp"] - tokens["mu"]) / np.maximum(tokens["sigma"], 1e-3)
            text = tokenizer.decode(row["labels"].tolist(), skip_special_tokens=True)  # the answer: the EOS is special
            assert text == item.answer
            plain = {
                "mia_loss": loss,
                "mia_zlib": loss / len(zlib.compress(text.encode("utf-8"))),
                "mia_min_k": -lowest_mean(tokens["logp"]),
                "mia_min_k_plus_plus": -lowest_mean(z),
            }
            for attack, value in plain.items():
                got = result.evaluation("m").logs[attack][split]["value_by_index"][str(item.index)]["score"]
                assert got == pytest.approx(value, rel=1e-4, abs=TOL), (attack, split, item.index)
                scores.setdefault(attack, {}).setdefault(split, []).append(value)
                stored.setdefault(attack, {}).setdefault(split, []).append(got)
    for attack, by_split in scores.items():
        # The AUC is a function of the forget/holdout orderings, and some plain scores here are closer than the
        # scores' tolerance (mia_loss: 2.1e-4 apart vs 1e-4·4.55): the code's float32 scores may order such a pair
        # either way on another machine. So the AUC is checked, exactly, against the pairwise AUC of the scores the
        # code stored (each checked against the plain computation above): an AUC bug still fails it.
        mine = stored[attack]
        entry = result.evaluation("m").logs[attack]
        assert entry["auc"] == entry["agg_value"] == pytest.approx(pairwise_auc(mine["forget"], mine["holdout"]))
        assert entry["forget"]["agg_value"] == pytest.approx(np.mean(by_split["forget"]), rel=1e-4)
    auc = stored["mia_min_k"]
    reference = 1 - 0.5
    expected = ((1 - pairwise_auc(auc["forget"], auc["holdout"])) - reference) / (reference + EPS) * 100
    assert agg(result, "privleak") == pytest.approx(expected)


def test_partial_model_utility_is_the_harmonic_mean_of_the_components_present(tiny_result) -> None:
    _, result = tiny_result
    names = ["retain_Q_A_Prob", "retain_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Truth_Ratio"]
    values = [agg(result, name) for name in names]
    expected = 0.0 if min(values) <= 0 else len(values) / sum(1 / v for v in values)
    assert agg(result, "model_utility_partial") == pytest.approx(expected)
    assert "model_utility" not in result.evaluation("m").logs  # four of nine components: not open-unlearning's MU
    assert agg(result, "forget_quality") is None  # no oracle: undefined, not guessed


def test_next_token_statistics_match_numpy_in_any_chunking() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=generator) * 4
    targets = torch.randint(0, 50, (37,), generator=generator)
    logp = torch.log_softmax(logits.double(), dim=-1).numpy()
    p = np.exp(logp)
    mu = (p * logp).sum(axis=1)
    variance = (p * logp**2).sum(axis=1) - mu**2
    for chunk in (1, 5, 256):
        got = next_token_statistics(logits, targets, chunk_rows=chunk)
        np.testing.assert_allclose(got["logp"], logp[np.arange(37), targets.numpy()], atol=1e-5)
        np.testing.assert_array_equal(got["argmax"], logits.argmax(dim=-1))
        np.testing.assert_allclose(got["mu"], mu, atol=1e-5)
        np.testing.assert_allclose(got["sigma"], np.sqrt(variance), atol=1e-4)
    wanted = torch.arange(37) % 3 == 0
    some = next_token_statistics(logits, targets, wanted, chunk_rows=4)
    np.testing.assert_allclose(some["mu"][wanted], mu[wanted.numpy()], atol=1e-5)
    assert torch.isnan(some["sigma"][~wanted]).all()


# ------------------------------------------------------------------------------------------ EM / ES


class NextCharModel(torch.nn.Module):
    """Predicts token id + 1 at every position (logits a scaled one-hot): its argmax is known in advance."""

    def __init__(self, vocab: int = 128) -> None:
        super().__init__()
        self.vocab = vocab
        self.scale = torch.nn.Parameter(torch.tensor(10.0))
        self.config = SimpleNamespace(max_position_embeddings=128)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        nxt = torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float()
        return SimpleNamespace(logits=nxt * self.scale)


def test_exact_memorisation_and_extraction_strength_on_a_model_with_known_argmax(tokenizer) -> None:
    # The chat prompt ends with ":" so the model predicts ";" then each next character: ";<=>" is all right;
    # in "ab;<" only b and < follow their predecessor: EM = 2/4, last miss at 3rd token → ES = 1 − 3/4.
    def item(index: int, answer: str) -> QAItem:
        return QAItem(index, "q?", answer, perturbed_answer=["zz"])

    data = SplitData(
        forget=QADataset("t", "forget", [item(0, ";<=>"), item(1, "ab;<"), item(2, "qqqq")]),
        retain=QADataset("t", "retain", [item(3, "ab;<")]),
    )
    result = evaluate([("m", NextCharModel(), tokenizer)], data, cache=False)
    em = [record(result, "exact_memorization", i)["score"] for i in range(3)]
    es = [record(result, "extraction_strength", i)["score"] for i in range(3)]
    textbook = [record(result, "extraction_strength_textbook", i)["score"] for i in range(3)]
    assert em == [1.0, 0.5, 0.0]  # the appended EOS is left out, as open-unlearning leaves it out
    assert es == [1.0, 0.25, 0.25]  # open-unlearning's search stops at k = T − 1: "qqqq" scores 1/T, not 0
    assert textbook == [1.0, 0.25, 0.0]
    assert agg(result, "exact_memorization") == pytest.approx(0.5)
    assert record(result, "retain_exact_memorization", 3)["score"] == 0.5
    assert record(result, "retain_extraction_strength", 3)["score"] == 0.25


# ------------------------------------------------------------------------------------------ batching, passes


def test_results_do_not_depend_on_the_batch_size(splits, tokenizer) -> None:
    model = make_tiny_llama(seed=2)
    frames = [
        evaluate([("m", model, tokenizer)], splits, settings=EvalSettings(batch_size=size), cache=False).items()
        for size in (1, 3, 100)
    ]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame.drop(columns="value"), frames[0].drop(columns="value"))
        np.testing.assert_allclose(frame["value"], frames[0]["value"], rtol=1e-5, atol=1e-5)


def test_two_forward_passes_per_model_per_batch_at_most(splits, tokenizer) -> None:
    """One pass for the batch's questions, one for all their answers (rows sharing a question share its pass);
    a batch where no two rows share a question takes a single pass."""
    models = [make_tiny_llama(seed=0), make_tiny_llama(seed=1)]
    calls = [count_forwards(model) for model in models]
    items = sum(len(split) for split in splits.splits().values())
    evaluate([("a", models[0], tokenizer), ("b", models[1], tokenizer)], splits,
             settings=EvalSettings(batch_size=4), cache=False)  # fmt: skip
    batches = plan_batches(plan_units(splits, tokenizer, True, 2048), 4)
    assert len(batches) == math.ceil(items / 4)
    rows = [[row for unit in batch for row in unit.rows] for batch in batches]
    shared = [len({tuple(r.input_ids[: r.score_from]) for r in batch}) < len(batch) for batch in rows]
    assert any(shared)
    assert [c[0] for c in calls] == [len(batches) + sum(shared)] * 2


def test_progress_reports_every_batch(splits, tokenizer) -> None:
    seen: list[tuple[int, int, str]] = []
    evaluate([("m", make_tiny_llama(), tokenizer)], splits, settings=EvalSettings(batch_size=5), cache=False,
             progress=lambda done, total, label: seen.append((done, total, label)))  # fmt: skip
    total = math.ceil(13 / 5)
    assert seen == [(done, total, "m") for done in range(1, total + 1)]


# ------------------------------------------------------------------------------------------ cache


def test_cache_hit_does_not_recompute(splits, tokenizer) -> None:
    model = make_tiny_llama(seed=4)
    calls = count_forwards(model)
    first = evaluate([("m", model, tokenizer)], splits)
    done = calls[0]
    again = evaluate([("m", model, tokenizer)], splits)
    assert calls[0] == done and again.evaluations[0].cached and not first.evaluations[0].cached
    pd.testing.assert_frame_equal(again.to_frame(), first.to_frame())
    evaluate([("m", model, tokenizer)], splits, settings=EvalSettings(batch_size=2))  # batching: same numbers
    assert calls[0] == done
    evaluate([("m", model, tokenizer)], splits, settings=EvalSettings(chat=False))
    assert calls[0] > done
    done = calls[0]
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert not evaluate([("m", model, tokenizer)], splits).evaluations[0].cached
    assert calls[0] > done


def test_cache_identity_of_a_model_folder_follows_its_files(tmp_path: Path) -> None:
    folder = save_tiny_model_dir(tmp_path / "tiny")
    data = word_splits()
    first = evaluate([ModelSpec(str(folder))], data)
    assert evaluate([ModelSpec(str(folder))], data).evaluations[0].cached
    config = json.loads((folder / "config.json").read_text())
    atomic_write_json(folder / "config.json", config | {"rms_norm_eps": 1e-3})
    changed = evaluate([ModelSpec(str(folder))], data)
    assert not changed.evaluations[0].cached
    assert first.evaluations[0].model == "tiny"


# ------------------------------------------------------------------------------------------ oracle


def test_forget_quality_of_a_model_against_itself_is_one(splits, tokenizer) -> None:
    models = [("target", make_tiny_llama(seed=0), tokenizer), ("oracle", make_tiny_llama(seed=5), tokenizer)]
    result = evaluate(models, splits, oracle="oracle", cache=False)
    assert agg(result, "forget_quality", "oracle") == 1.0
    assert agg(result, "privleak", "oracle") == pytest.approx(0.0, abs=1e-6)
    ratios = {
        name: [r["score"] for r in result.evaluation(name).logs["forget_truth_ratio"]["value_by_index"].values()]
        for name in ("target", "oracle")
    }
    assert agg(result, "forget_quality", "target") == pytest.approx(stats.ks_2samp(*ratios.values()).pvalue)
    assert result.oracle == "oracle"


def test_oracle_from_a_results_folder(splits, tokenizer, tmp_path: Path) -> None:
    oracle_model = make_tiny_llama(seed=5)
    evaluate([("retain90", oracle_model, tokenizer)], splits, out_dir=tmp_path / "oracle")
    models = [("target", make_tiny_llama(seed=0), tokenizer), ("retain90", oracle_model, tokenizer)]
    by_name = evaluate(models, splits, oracle="retain90")
    by_folder = evaluate(models[:1], splits, oracle=tmp_path / "oracle" / "retain90")
    for name in ("forget_quality", "privleak"):
        assert agg(by_folder, name, "target") == pytest.approx(agg(by_name, name, "target"))
    with pytest.raises(UserError, match="several models"):
        evaluate([models[0], models[0]], splits)


# ------------------------------------------------------------------------------------------ files and JSON


def sort_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), na_position="first").reset_index(drop=True)


def test_written_files_read_back_by_ingest_give_the_same_tables(splits, tokenizer, tmp_path: Path) -> None:
    models = [("target", make_tiny_llama(seed=0), tokenizer), ("NPO_run", make_tiny_llama(seed=1), tokenizer)]
    settings = EvalSettings(rouge=True, max_new_tokens=4)
    result = evaluate(models, splits, oracle="target", settings=settings, out_dir=tmp_path / "out", cache=False)
    assert (tmp_path / "out" / "target" / "TOFU_EVAL.json").is_file()
    assert (tmp_path / "out" / "NPO_run" / "TOFU_SUMMARY.json").is_file()
    read = ingest([tmp_path / "out"])
    assert not read.warnings
    assert set(read.summary["method"]) == {"target", "NPO"}
    pd.testing.assert_frame_equal(sort_rows(read.summary.drop(columns="source")), sort_rows(result.to_frame()))
    pd.testing.assert_frame_equal(sort_rows(read.items.drop(columns="source")), sort_rows(result.items()))
    texts = read.texts.drop(columns=["source", "option"])
    pd.testing.assert_frame_equal(sort_rows(texts), sort_rows(result.texts()))


def test_json_round_trip(tiny_result) -> None:
    _, result = tiny_result
    again = EvalResult.from_json(result.to_json())
    assert again == result
    pd.testing.assert_frame_equal(again.to_frame(), result.to_frame())
    with pytest.raises(UserError, match="not an evaluation result"):
        EvalResult.from_dict({"format": "other"})


# ------------------------------------------------------------------------------------------ ROUGE


def plain_greedy(model: torch.nn.Module, ids: list[int], steps: int, stop: int) -> tuple[list[int], float]:
    """Greedy decoding without a KV cache: the whole sequence again at every step. Also returns the smallest ratio,
    over the steps, of the best token's lead over the second to 2τ (tiny_models.top_margin, logit_tolerance): above
    1, every greedy decision is the same under any computation within τ of these logits (KV cache, batching, padding,
    another CPU), so comparing generations exactly is fair."""
    out: list[int] = []
    margin = math.inf
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + out])).logits[0, -1]
            margin = min(margin, top_margin(logits) / (2 * logit_tolerance(model, logits)))
            token = int(logits.argmax())
            if token == stop:
                break
            out.append(token)
    return out, margin


def test_rouge_scores_greedy_generations(splits, tokenizer) -> None:
    model = make_tiny_llama(seed=0)
    settings = EvalSettings(rouge=True, max_new_tokens=6, generation_batch_size=1)
    one_by_one = evaluate([("m", model, tokenizer)], splits, settings=settings, cache=False)
    batched = evaluate(
        [("m", model, tokenizer)], splits, settings=EvalSettings(rouge=True, max_new_tokens=6), cache=False
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    recalls = []
    for item in splits.forget:
        prompt = encode(tokenizer, item.question, None, chat=True).input_ids
        ids, margin = plain_greedy(model, prompt, 6, tokenizer.eos_token_id)
        assert margin > 1  # precondition: no near-tie among the greedy decisions (see plain_greedy)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        got = record(one_by_one, "forget_Q_A_ROUGE", item.index)
        assert got["generation"] == text.strip()
        assert got["ground_truth"] == item.answer
        assert got["rougeL_recall"] == pytest.approx(scorer.score(item.answer, text.strip())["rougeL"].recall)
        assert record(batched, "forget_Q_A_ROUGE", item.index)["generation"] == got["generation"]
        recalls.append(got["rougeL_recall"])
    assert agg(one_by_one, "forget_Q_A_ROUGE") == pytest.approx(np.mean(recalls))
    assert "retain_Q_A_ROUGE" in one_by_one.evaluation("m").logs


# ------------------------------------------------------------------------------------------ runs, specs, CLI


WORDS = (*(f"w{i}" for i in range(40)), "the", "capital", "of", "france", "is", "paris", "?", ".")


def word_splits() -> SplitData:
    def items(start: int) -> list[QAItem]:
        return [
            QAItem(i, f"the capital of w{i} ?", f"the capital is w{i + 1} .", paraphrased_answer=f"w{i + 1} is .",
                   perturbed_answer=[f"the capital is w{i + 2} .", f"the capital is w{i + 3} ."])
            for i in range(start, start + 2)
        ]  # fmt: skip

    return SplitData(
        forget=QADataset("w", "forget", items(0)),
        retain=QADataset("w", "retain", items(4)),
        holdout=QADataset("w", "holdout", items(8)),
        world_facts=QADataset("w", "world_facts", items(12)),
    )


def save_adapter(base: Path, out: Path, seed: int) -> Path:
    """A random LoRA checkpoint as core.unlearn writes one: adapter files, a manifest, the completion marker."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    atomic_write_json(out / "adapter_config.json", adapter_config | {"base_model_name_or_path": str(base)})
    atomic_write_json(out / "manifest.json", {"method": "npo", "step": int(out.name.split("-")[1])})
    atomic_write_json(out / ".complete.json", {})
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> tuple[Path, Path]:
    base = save_tiny_model_dir(tmp_path / "base", words=WORDS)
    run = tmp_path / "runs" / "npo_forget"
    for step, seed in ((5, 1), (10, 2)):
        save_adapter(base, run / f"checkpoint-{step}", seed)
    (run / "checkpoint-15").mkdir()  # an incomplete checkpoint is never evaluated
    return base, run


def test_evaluate_run_writes_each_checkpoint_and_loads_the_backbone_once(run_dir, monkeypatch) -> None:
    import core.evaluation.loading as evaluate_module

    base, run = run_dir
    loads = []
    original = evaluate_module.load_backbone
    monkeypatch.setattr(evaluate_module, "load_backbone", lambda *a: loads.append(a) or original(*a))
    result = evaluate_run(run, word_splits(), oracle=ModelSpec(str(base)))
    assert len(loads) == 1
    assert [(e.model, e.method, e.step) for e in result.evaluations] == [
        ("npo_forget", "NPO", 5), ("npo_forget", "NPO", 10), ("base", "base", None)
    ]  # fmt: skip
    assert (run / "checkpoint-5" / "evals" / "TOFU_EVAL.json").is_file()
    probs = {e.step: e.logs["forget_Q_A_Prob"]["agg_value"] for e in result.evaluations}
    assert len(set(probs.values())) == 3  # each adapter really is applied (and the backbone alone is not)
    assert agg(result, "forget_quality", "base") == 1.0
    read = ingest([run])
    assert sorted(read.runs()["step"].dropna().tolist()) == [5, 10]


def test_adapter_numbers_equal_the_merged_model(run_dir) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, run = run_dir
    data = word_splits()
    via_spec = evaluate([ModelSpec(str(run / "checkpoint-10"))], data, cache=False)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "checkpoint-10")
    tokenizer = load_tokenizer(ModelSpec(str(base)))
    in_memory = evaluate([("npo_forget", merged.merge_and_unload(), tokenizer)], data, cache=False)
    np.testing.assert_allclose(via_spec.items()["value"], in_memory.items()["value"], rtol=1e-4, atol=1e-5)


def test_cli_evaluates_specs_and_runs(run_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, run = run_dir
    data = tmp_path / "data"
    for split, qa in word_splits().splits().items():
        data.mkdir(exist_ok=True)
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(i.to_record()) for i in qa) + "\n")
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--model", str(base), "--run", str(run), "--data", str(data),
                              "--out", str(tmp_path / "out"), "--oracle", "base", "--batch-size", "3"])  # fmt: skip
    assert args.handler(args) == 0
    table = capsys.readouterr().out
    assert "forget_quality" in table and "npo_forget" in table
    assert (tmp_path / "out" / "npo_forget" / "checkpoint-10" / "evals" / "TOFU_SUMMARY.json").is_file()
    summary = json.loads((tmp_path / "out" / "base" / "TOFU_SUMMARY.json").read_text())
    assert summary["forget_quality"] == 1.0
    with pytest.raises(UserError, match="at least one"):
        args.handler(parser.parse_args(["evaluate", "--data", str(data)]))


def test_eval_model_needs_a_name_or_spec(splits) -> None:
    with pytest.raises(UserError, match="needs a spec"):
        evaluate([EvalModel(name="x")], splits)
    with pytest.raises(UserError, match="no QA split"):
        evaluate([EvalModel(name="x")], SplitData())


def test_demo_specs_are_named_after_the_demo_model_not_its_cache_folder(run_dir, monkeypatch) -> None:
    import core.unlearn.demo

    base, run = run_dir

    def resolve(name: str, template: ModelSpec) -> ModelSpec:
        step = name.partition("@")[2]
        adapter = str(run / f"checkpoint-{step}") if step else None
        return dataclasses.replace(template, source=str(base), adapter=adapter)

    monkeypatch.setattr(core.unlearn.demo, "resolve_demo_spec", resolve)
    result = evaluate([ModelSpec.parse("demo:target"), ModelSpec.parse("demo:npo@5")], word_splits(), oracle="target")
    assert [(e.model, e.method, e.step) for e in result.evaluations] == [("target", "target", None), ("npo", "NPO", 5)]
    assert agg(result, "forget_quality", "target") == 1.0


REAL_OU = EXAMPLE_RESULTS  # real open-unlearning outputs (assets/examples/README.md)


def test_derived_metrics_reproduce_open_unlearning_stored_values() -> None:
    """forget_quality, privleak and model_utility of the real Llama-3.2-1B full run, from its per-item numbers and the
    retain90 oracle's folder, equal what open-unlearning stored."""
    full = json.loads((REAL_OU / "tofu_Llama-3.2-1B-Instruct_full" / "evals_forget10" / "TOFU_EVAL.json").read_text())
    reference = folder_reference(REAL_OU / "tofu_Llama-3.2-1B-Instruct_retain90")
    assert reference.truth_ratios.size == 400 and reference.min_k_auc == pytest.approx(0.3826125)
    derived = derived_logs(full, reference)
    for name in ("forget_quality", "privleak", "model_utility"):
        assert derived[name]["agg_value"] == pytest.approx(full[name]["agg_value"], rel=1e-9), name
