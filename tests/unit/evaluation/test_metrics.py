"""Metric definitions against hand-worked examples and against the numbers stored in real open-unlearning files."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from core.common.errors import UserError
from core.evaluation import metrics
from core.evaluation.results import EXAMPLE_RESULTS

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"  # real TOFU data (README there)
EXAMPLES = EXAMPLE_RESULTS.parent  # real open-unlearning outputs (assets/examples/README.md)
OU = "open-unlearning-eval"
TOFU_RUNS = {
    "full": f"{OU}/tofu_Llama-3.2-1B-Instruct_full/evals_forget10/TOFU_EVAL.json",
    "retain90": f"{OU}/tofu_Llama-3.2-1B-Instruct_retain90/TOFU_EVAL.json",
}
MUSE_RUNS = {
    "target": f"{OU}/muse_Llama-2-7b-hf_News_target/MUSE_EVAL.json",
    "retrain": f"{OU}/muse_Llama-2-7b-hf_News_retrain/MUSE_EVAL.json",
}
TR_SETS = {  # truth-ratio metric -> (true-answer metric, wrong-answers metric)
    "forget_truth_ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob"),
    "retain_Truth_Ratio": ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob"),
    "ra_Truth_Ratio": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"),
    "wf_Truth_Ratio": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob"),
}


@pytest.fixture(scope="module")
def real() -> Path:
    return REAL


@pytest.fixture(scope="module")
def tofu(real: Path) -> dict[str, dict]:
    return {name: json.loads((EXAMPLES / path).read_text()) for name, path in TOFU_RUNS.items()}


@pytest.fixture(scope="module")
def muse(real: Path) -> dict[str, dict]:
    return {name: json.loads((EXAMPLES / path).read_text()) for name, path in MUSE_RUNS.items()}


def field(log: dict, metric: str, name: str) -> np.ndarray:
    return np.array([item[name] for item in log[metric]["value_by_index"].values()], dtype=float)


def mia_scores(entry: dict, split: str) -> np.ndarray:
    return np.array([item["score"] for item in entry[split]["value_by_index"].values()])


# ------------------------------------------------------------------------------------------ hand-worked


def test_probability_is_geometric_mean_of_token_probabilities() -> None:
    token_probs = np.array([0.5, 0.25, 0.125])
    avg_loss = metrics.average_loss(np.log(token_probs))
    assert avg_loss == pytest.approx(-np.mean(np.log(token_probs)))
    assert metrics.probability(avg_loss) == pytest.approx(0.25)  # (0.5·0.25·0.125)^(1/3)


def test_normalised_probability_by_hand() -> None:
    result = metrics.normalised_probability([0.5, 0.1], [[0.25, 0.25], [0.3, 0.6]], eps=0.0)
    np.testing.assert_allclose(result, [0.5, 0.1])


def test_truth_ratio_from_known_answer_losses() -> None:
    # paraphrased p = 1/2; perturbed losses ln 2 and ln 8 average to ln 4, so p_wrong = 1/4 and TR = 1/2.
    ratios = metrics.truth_ratio([math.log(2), math.log(2)], [[math.log(2), math.log(8)], [math.log(4), math.log(4)]])
    np.testing.assert_allclose(ratios, [0.5, 0.5], rtol=1e-9)


def test_truth_ratio_aggregates_by_hand() -> None:
    ratios = [0.5, 2.0, 1.0]
    assert metrics.truth_ratio_forget(ratios) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert metrics.truth_ratio_retain(ratios) == pytest.approx(0.5 / 3)


def test_rouge_by_hand() -> None:
    # LCS of "the cat sat on the mat" / "the cat lay on a mat" is "the cat on mat": 4 of 6 tokens each way.
    scores = metrics.rouge_scores("the cat lay on a mat", "the cat sat on the mat")
    assert scores["rougeL_recall"] == pytest.approx(4 / 6)
    assert scores["rougeL_f1"] == pytest.approx(4 / 6)
    assert metrics.rouge_l_recall("The cat", "the cat sat on the mat") == pytest.approx(2 / 6)
    assert metrics.rouge_l_f1("The cat", "the cat sat on the mat") == pytest.approx(2 * (1 * 2 / 6) / (1 + 2 / 6))
    assert metrics.rouge_l_recall("running cats", "run cat") == 1.0  # the Porter stemmer is on


def test_exact_memorisation_by_hand() -> None:
    assert metrics.exact_memorisation([1, 2, 3, 4], [1, 9, 3, 4]) == 0.75


def open_unlearning_es(pred: list[int], label: list[int]) -> float:
    """open-unlearning's loop read literally (memorization.py @ d3d7cf9): k runs 0..T−1 and stops at the first
    matching suffix; when none matches it ends at T − 1."""
    size = len(label)
    for k in range(size):
        if pred[k:] == label[k:]:
            break
    return 1 - k / size


def brute_force_es(pred: list[int], label: list[int]) -> float:
    """The definition read literally: the smallest k whose suffix matches, k = T when none does."""
    size = len(label)
    k = next((k for k in range(size + 1) if pred[k:] == label[k:]), size)
    return 1 - k / size


@pytest.mark.parametrize(
    ("pred", "expected_k"),
    [([5, 6, 7, 8], 0), ([0, 6, 7, 8], 1), ([5, 6, 0, 8], 3), ([5, 0, 7, 0], 4), ([0, 0, 0, 0], 4)],
)
def test_extraction_strength_with_known_k(pred: list[int], expected_k: int) -> None:
    label = [5, 6, 7, 8]
    assert metrics.extraction_strength_textbook(pred, label) == pytest.approx(1 - expected_k / 4)
    assert metrics.extraction_strength_textbook(pred, label) == pytest.approx(brute_force_es(pred, label))
    floored = metrics.extraction_strength(pred, label)
    assert floored == pytest.approx(1 - min(expected_k, 3) / 4)
    assert floored == pytest.approx(open_unlearning_es(pred, label))


def test_ids_must_align() -> None:
    with pytest.raises(UserError, match="equal 1-D"):
        metrics.exact_memorisation([1, 2], [1, 2, 3])
    with pytest.raises(UserError, match="no tokens"):
        metrics.extraction_strength([], [])


def test_zlib_score_by_hand() -> None:
    text = "The author's full name is Hsiao Yun-Hwa."
    assert metrics.zlib_score(0.5, text) == pytest.approx(0.5 / len(zlib.compress(text.encode("utf-8"))))


def test_min_k_by_hand() -> None:
    logp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert metrics.min_k_score(logp) == pytest.approx(4.5)  # int(5·0.4) = 2 lowest: −5, −4
    assert metrics.min_k_score([-1.0, -2.0, -3.0]) == pytest.approx(3.0)  # int(1.2) = 1
    assert metrics.min_k_score([-0.1], fraction=0.2) == pytest.approx(0.1)  # at least one token


def test_min_k_plus_plus_by_hand() -> None:
    # Two-word vocabulary with p = (1/4, 3/4) at every position: μ = Σ p log p, σ = √(p(1−p))·|log p1 − log p2|.
    p = np.array([0.25, 0.75])
    vocab_logprobs = np.log(np.tile(p, (3, 1)))
    mu, sigma = metrics.next_token_moments(vocab_logprobs)
    mu_hand = 0.25 * math.log(0.25) + 0.75 * math.log(0.75)
    sigma_hand = math.sqrt(0.25 * 0.75) * abs(math.log(0.25) - math.log(0.75))
    np.testing.assert_allclose(mu, mu_hand)
    np.testing.assert_allclose(sigma, sigma_hand)
    token_logprobs = np.log([0.25, 0.75, 0.75])  # z = −√3, 1/√3, 1/√3; one lowest of three at k = 40%
    score = metrics.min_k_plus_plus_score(token_logprobs, mu, sigma)
    assert score == pytest.approx(math.sqrt(3))
    assert metrics.min_k_plus_plus_score(token_logprobs, mu, sigma, fraction=1.0) == pytest.approx(
        -(-math.sqrt(3) + 2 / math.sqrt(3)) / 3
    )


def test_min_k_plus_plus_clamps_sigma() -> None:
    assert metrics.min_k_plus_plus_score([-1.0], [-0.5], [0.0]) == pytest.approx(0.5 / 1e-3)


def test_auc_on_separable_scores() -> None:
    assert metrics.mia_auc([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert metrics.mia_auc([0.8, 0.9], [0.1, 0.2]) == 0.0
    assert metrics.mia_auc([0.1, 0.5], [0.3, 0.9]) == pytest.approx(3 / 4)  # 3 of 4 pairs ordered
    fpr, tpr = metrics.mia_roc([0.1, 0.2], [0.8, 0.9])
    assert np.trapezoid(tpr, fpr) == pytest.approx(1.0)


def test_privleak_by_hand() -> None:
    assert metrics.privleak(0.75, 0.5, eps=0.0) == pytest.approx(-50.0)
    assert metrics.privleak(0.5, 0.5) == pytest.approx(0.0)


def test_forget_quality_is_scipy_ks_pvalue_and_none_without_oracle() -> None:
    rng = np.random.default_rng(0)
    model, oracle = rng.lognormal(size=50), rng.lognormal(0.5, size=60)
    assert metrics.forget_quality(model, None) is None
    assert metrics.forget_quality(model, oracle) == stats.ks_2samp(model, oracle).pvalue
    result = metrics.ks_test(model, oracle)
    assert result.statistic == stats.ks_2samp(model, oracle).statistic


def test_model_utility_by_hand() -> None:
    components = dict.fromkeys(metrics.MODEL_UTILITY_COMPONENTS, 1.0)
    components["wf_Truth_Ratio"] = 0.5
    assert metrics.model_utility(components) == pytest.approx(9 / (8 + 2))
    del components["ra_Q_A_ROUGE"]
    with pytest.raises(UserError, match="ra_Q_A_ROUGE"):
        metrics.model_utility(components)


def test_mcq_accuracy_by_hand() -> None:
    logliks = [[-1.0, -2.0, -3.0, -4.0], [-3.0, -0.5, -2.0, -9.0], [-2.0, -2.5, -7.0, -1.5]]
    assert metrics.mcq_accuracy(logliks, [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(UserError):
        metrics.mcq_accuracy(logliks, [0, 1])


def test_empty_inputs_are_user_errors() -> None:
    with pytest.raises(UserError, match="no values"):
        metrics.min_k_score([])


# ------------------------------------------------------------------------------------------ registry


def test_registry_holds_every_metric_with_metadata() -> None:
    expected = {
        "probability",
        "normalised_probability",
        "truth_ratio",
        "truth_ratio_forget",
        "truth_ratio_retain",
        "rouge_l_recall",
        "rouge_l_f1",
        "exact_memorisation",
        "extraction_strength",
        "average_loss",
        "zlib_score",
        "min_k_score",
        "min_k_plus_plus_score",
        "mia_auc",
        "privleak",
        "forget_quality",
        "model_utility",
        "mcq_accuracy",
    }
    assert expected <= set(metrics.METRICS)
    for metric in metrics.METRICS.values():
        assert metric.description and metric.kind in metrics.KINDS
    assert metrics.get_metric("mia_auc")([0.0], [1.0]) == 1.0
    assert {m.name for m in metrics.list_metrics("mia_score")} == {
        "average_loss",
        "zlib_score",
        "min_k_score",
        "min_k_plus_plus_score",
    }
    with pytest.raises(UserError, match="registered:"):
        metrics.get_metric("nope")
    with pytest.raises(ValueError, match="twice"):
        metrics.register("probability", kind="forget", higher_is_better=True, description="x")(lambda: 0)


@pytest.mark.parametrize(
    ("name", "split", "better"),
    [
        ("forget_Q_A_Prob", "forget", False),
        ("retain_Q_A_Prob", "retain", True),
        ("ra_Q_A_Prob_normalised", "real_authors", True),
        ("wf_Truth_Ratio", "world_facts", True),
        ("forget_truth_ratio", "forget", True),
        ("forget_knowmem_ROUGE", "forget", False),
        ("retain_knowmem_ROUGE", "retain", True),
        ("extraction_strength", "forget", False),
        ("forget_quality", "forget", True),
        ("model_utility", "utility", True),
        ("mia_min_k", "forget", None),
        ("mia_min_k/holdout", "holdout", None),
        ("privleak", "forget", None),
        ("mmlu/acc", "mmlu", True),
        ("wmdp_bio/acc", "wmdp_bio", False),
        ("something_new", "other", None),
    ],
)
def test_describe_reported_names(name: str, split: str, better: bool | None) -> None:
    info = metrics.describe(name)
    assert (info.split, info.higher_is_better) == (split, better)


def test_orient_makes_higher_better() -> None:
    np.testing.assert_allclose(metrics.orient("forget_Q_A_Prob", [0.2, 0.9]), [-0.2, -0.9])
    np.testing.assert_allclose(metrics.orient("privleak", [-50.0, 10.0]), [-50.0, -10.0])
    np.testing.assert_allclose(metrics.orient("mia_loss", [0.9, 0.4]), [-0.4, -0.1])
    with pytest.raises(UserError, match="direction"):
        metrics.orient("something_new", [1.0])


# ------------------------------------------------------------------------------------------ real files


@pytest.mark.parametrize("run", TOFU_RUNS)
def test_probability_reproduces_stored_per_item_prob(tofu: dict, run: str) -> None:
    log = tofu[run]
    for name in ("forget_Q_A_Prob", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "retain_Q_A_Prob", "wf_Q_A_Prob"):
        # open-unlearning computed prob in float32 on the GPU, hence the 1e-6 tolerance
        np.testing.assert_allclose(metrics.probability(field(log, name, "avg_loss")), field(log, name, "prob"), 1e-6)


@pytest.mark.parametrize("run", TOFU_RUNS)
def test_truth_ratio_reproduces_stored_per_item_values_and_aggregates(tofu: dict, run: str) -> None:
    log = tofu[run]
    for name, (true_metric, wrong_metric) in TR_SETS.items():
        ratios = metrics.truth_ratio(field(log, true_metric, "avg_loss"), field(log, wrong_metric, "avg_loss"))
        np.testing.assert_allclose(ratios, field(log, name, "score"), rtol=1e-12)
        aggregate = metrics.truth_ratio_forget if name.startswith("forget") else metrics.truth_ratio_retain
        assert aggregate(field(log, name, "score")) == pytest.approx(log[name]["agg_value"], rel=1e-12)


@pytest.mark.parametrize("run", TOFU_RUNS)
def test_normalised_probability_reproduces_stored_values(tofu: dict, run: str) -> None:
    log = tofu[run]
    for prefix in ("ra", "wf"):
        result = metrics.normalised_probability(
            field(log, f"{prefix}_Q_A_Prob", "prob"), field(log, f"{prefix}_Q_A_PERT_Prob", "prob")
        )
        np.testing.assert_allclose(result, field(log, f"{prefix}_Q_A_Prob_normalised", "prob"), rtol=1e-12)
        assert np.mean(result) == pytest.approx(log[f"{prefix}_Q_A_Prob_normalised"]["agg_value"], rel=1e-12)


@pytest.mark.parametrize("run", TOFU_RUNS)
def test_model_utility_is_harmonic_mean_of_stored_components(tofu: dict, run: str) -> None:
    log = tofu[run]
    components = {name: log[name]["agg_value"] for name in metrics.MODEL_UTILITY_COMPONENTS}
    assert metrics.model_utility(components) == pytest.approx(log["model_utility"]["agg_value"], rel=1e-12)
    assert metrics.model_utility(components) == pytest.approx(stats.hmean(list(components.values())), rel=1e-12)


def test_forget_quality_full_vs_retain90_reproduces_stored(tofu: dict) -> None:
    model = field(tofu["full"], "forget_truth_ratio", "score")
    oracle = field(tofu["retain90"], "forget_truth_ratio", "score")
    assert metrics.forget_quality(model, oracle) == pytest.approx(tofu["full"]["forget_quality"]["agg_value"], rel=1e-9)
    assert tofu["retain90"]["forget_quality"]["agg_value"] is None


def test_mia_auc_reproduces_every_stored_auc(tofu: dict, muse: dict) -> None:
    checked = 0
    for log in [*tofu.values(), *muse.values()]:
        for name, entry in log.items():
            if name.startswith("mia_"):
                auc = metrics.mia_auc(mia_scores(entry, "forget"), mia_scores(entry, "holdout"))
                assert auc == pytest.approx(entry["auc"], abs=1e-12)
                assert entry["agg_value"] == entry["auc"]
                checked += 1
    assert checked == 6 + 5 + 6 + 5


def test_privleak_reproduces_stored_values(tofu: dict, muse: dict) -> None:
    cases = [
        (tofu["full"], tofu["retain90"]["mia_min_k"]["agg_value"]),
        (tofu["retain90"], metrics.PRIVLEAK_DEFAULT_REFERENCE_AUC),
        (muse["target"], muse["retrain"]["mia_min_k"]["agg_value"]),
        (muse["retrain"], metrics.PRIVLEAK_DEFAULT_REFERENCE_AUC),
    ]
    for log, reference in cases:
        value = metrics.privleak(log["mia_min_k"]["agg_value"], reference)
        assert value == pytest.approx(log["privleak"]["agg_value"], rel=1e-12)


def detokenised(text: str) -> str:
    """The clean-up transformers applies when decoding (clean_up_tokenization_spaces=True)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
        text = text.replace(before, after)
    for suffix in ("'m", "'s", "'ve", "'re"):
        text = text.replace(f" {suffix}", suffix)
    return text


def test_loss_and_zlib_scores_reproduce_stored_mia_scores(tofu: dict, real: Path) -> None:
    answers = [row["answer"] for row in json.loads((real / "tofu-dataset/forget10_perturbed.json").read_text())]
    log = tofu["full"]
    losses = mia_scores(log["mia_loss"], "forget")
    np.testing.assert_array_equal(losses, field(log, "forget_Q_A_Prob", "avg_loss"))
    zlib_scores = [metrics.zlib_score(loss, detokenised(text)) for loss, text in zip(losses, answers, strict=True)]
    np.testing.assert_allclose(zlib_scores, mia_scores(log["mia_zlib"], "forget"), rtol=1e-12)


def test_rouge_reproduces_every_stored_item(tofu: dict, muse: dict) -> None:
    checked = 0
    for log in (tofu["full"], muse["retrain"]):  # one run per benchmark keeps this test at a few seconds
        for name, entry in log.items():
            if name.endswith("ROUGE"):
                for item in entry["value_by_index"].values():
                    scores = metrics.rouge_scores(item["generation"], item["ground_truth"])
                    assert scores == pytest.approx({key: item[key] for key in scores}, abs=1e-12)
                    checked += 1
    assert checked == (400 + 400 + 100 + 117) + 300


def test_stored_rouge_aggregates_use_recall_for_tofu_and_f1_for_muse(tofu: dict, muse: dict) -> None:
    assert np.mean(field(tofu["full"], "forget_Q_A_ROUGE", "rougeL_recall")) == pytest.approx(
        tofu["full"]["forget_Q_A_ROUGE"]["agg_value"], rel=1e-12
    )
    assert np.mean(field(muse["target"], "forget_knowmem_ROUGE", "rougeL_f1")) == pytest.approx(
        muse["target"]["forget_knowmem_ROUGE"]["agg_value"], rel=1e-12
    )
    assert metrics.describe("forget_knowmem_ROUGE").metric is metrics.get_metric("rouge_l_f1")
    assert metrics.describe("forget_Q_A_ROUGE").metric is metrics.get_metric("rouge_l_recall")
