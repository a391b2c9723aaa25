"""Display names of metrics (core.present.names): every metric the registries hold and every key the evaluation
writes has one, read from the registries at run time (a metric added later is covered without editing this file);
hand-worked names, directions that agree with core.evaluation.metrics.describe, precision and path scrubbing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.data.qa import SPLIT_NAMES, QAItem
from core.evaluation import metrics
from core.evaluation.derived import OracleReference, derived_logs
from core.evaluation.evaluate import teacher_forced_logs
from core.evaluation.mia import MIA_ATTACKS
from core.evaluation.scores import ItemScores, TokenScores
from core.evaluation.split_metrics import SPLIT_METRICS, prefixed
from core.evaluation.tables import walk_entry
from core.present.names import REGISTERED, format_value, metric_label, metric_name, public_path, scrub_paths


def token_scores(rng: np.random.Generator, n: int = 5) -> TokenScores:
    labels = rng.integers(0, 50, n)
    return TokenScores(
        logp=-rng.random(n) * 3, argmax=np.where(rng.random(n) < 0.5, labels, labels + 1), labels=labels,
        mu=-rng.random(n), sigma=rng.random(n) + 0.1,
    )  # fmt: skip


def synthetic_scores() -> list[ItemScores]:
    """Three items per split, each with a paraphrase and three perturbed answers: every split metric applies."""
    rng = np.random.default_rng(0)
    scores = []
    for split in SPLIT_NAMES:
        for index in range(3):
            item = QAItem(index, f"q{index}", f"answer {index}", f"pq{index}", f"pa{index}", ["w1", "w2", "w3"])
            rows = [token_scores(rng) for _ in range(5)]
            scores.append(ItemScores(split, item, rows[0], rows[1], rows[2:], split != "world_facts"))
    return scores


def written_keys() -> list[str]:
    """The summary metric names the evaluation writes for every split: split metrics, MIA attacks, derived metrics
    (against an oracle) and ROUGE, flattened the way ingest reads them (core.evaluation.tables.walk_entry)."""
    logs = teacher_forced_logs(synthetic_scores())
    logs |= {prefixed(split, "Q_A_ROUGE"): {"agg_value": 0.5} for split in SPLIT_NAMES}  # rouge.rouge_logs' names
    ratios = np.array([r["score"] for r in logs["forget_truth_ratio"]["value_by_index"].values()])
    oracle = OracleReference("oracle", ratios * 1.1, 0.5)
    # the real-authors split is not among the evaluation's own: model utility with it (all nine components), and
    # the partial utility without it
    complete = {name: {"agg_value": 0.5} for name in metrics.MODEL_UTILITY_COMPONENTS} | logs
    logs |= derived_logs(logs, oracle) | derived_logs(complete, oracle)
    return sorted(
        {name for key, entry in logs.items() for part, name, _ in walk_entry(key, entry) if part == "summary"}
    )


def test_every_registered_metric_has_a_display_name() -> None:
    missing = [name for name in metrics.METRICS if name not in REGISTERED]
    assert missing == []
    assert set(REGISTERED) <= set(metrics.METRICS)  # no name for a metric that is gone


def test_every_key_the_evaluation_writes_has_a_display_name() -> None:
    keys = written_keys()
    # the registries were all exercised: a key for every split metric's family and every MIA attack
    assert len(SPLIT_METRICS) >= 7 and {f"{name}/auc" for name in MIA_ATTACKS} <= set(keys)
    assert {"forget_quality", "model_utility", "privleak", "forget_Q_A_Prob", "wf_Q_A_Prob_normalised"} <= set(keys)
    unnamed = [key for key in keys if not metric_name(key).known]
    assert unnamed == []
    for key in keys:
        named = metric_name(key)
        assert named.name and named.name != key and "_" not in named.name, key


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("forget_Q_A_Prob", "Forget-set answer probability (0–1, lower = more forgotten)"),
        ("retain_Q_A_Prob", "Retain-set answer probability (0–1, higher = better)"),
        ("forget_quality", "Forget quality (p-value, higher = closer to the oracle)"),
        ("model_utility", "Model utility (0–1, higher = better)"),
        ("privleak", "Privacy leakage (%, closer to 0 = like the oracle)"),
        ("mia_min_k/auc", "Membership-inference AUC, Min-K% attack (0–1, closer to 0.5 = forget set unrecognisable)"),
        ("wmdp_cyber/acc", "WMDP cyber accuracy (0–1, lower = more forgotten)"),
        ("mmlu/acc", "MMLU accuracy (0–1, higher = better)"),
        ("exact_memorization", "Forget-set exact memorisation (0–1, lower = more forgotten)"),
        ("mia_loss/holdout", "LOSS membership score, mean score on the holdout set (score)"),
    ],
)  # fmt: skip
def test_hand_worked_labels(key: str, label: str) -> None:
    assert metric_label(key) == label


def test_unknown_keys_fall_back_to_a_readable_form() -> None:
    assert metric_name("partial_model_utility").name == "Partial model utility"
    assert metric_name("forget_new_score").name == "Forget-set new score"
    assert metric_name("some/odd_key").name == "Some odd key"
    assert not metric_name("partial_model_utility").known
    assert metric_label("partial_model_utility") == "Partial model utility"  # no direction invented


def test_directions_agree_with_the_registry() -> None:
    for key in [*written_keys(), "wmdp_bio/acc", "mmlu/acc", "forget_knowmem_ROUGE", "retain_verbmem_ROUGE"]:
        info, words = metrics.describe(key), metric_name(key).direction
        if info.higher_is_better is True:
            assert words.startswith("higher"), key
        elif info.higher_is_better is False:
            assert words.startswith("lower"), key
        elif info.ideal is not None:
            assert words.startswith(f"closer to {info.ideal:g}"), key
        else:
            assert words == "", key
        forgetting = metrics.is_forgetting_split(info.split) and info.metric is not None
        assert ("forgotten" in words) == (forgetting and info.higher_is_better is not None and key != "forget_quality"
                                          and info.metric.kind != "utility"), key  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("privleak", 26.04, "26.0"),
        ("privleak", -0.55, "-0.6"),  # stored as −0.55000000000000004, so it rounds away from zero
        ("forget_quality", 0.0021934, "0.00219"),
        ("forget_quality", 0.7812, "0.781"),
        ("forget_quality", 1.0, "1"),
        ("forget_quality", 3.2e-7, "3.2e-07"),
        ("forget_Q_A_Prob", 0.29712, "0.297"),
        ("model_utility", 0.4925, "0.492"),  # 0.4925 is stored as 0.49249999…
        ("mia_loss/forget", 1.234567, "1.235"),
        ("partial_model_utility", 12345.678, "1.235e+04"),
        ("forget_Q_A_Prob", None, "—"),
        ("forget_Q_A_Prob", math.nan, "—"),
        ("mmlu/acc_stderr", "N/A", "N/A"),
    ],
)
def test_precision_by_unit(key: str, value, text: str) -> None:
    assert format_value(key, value) == text


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("/home/me/.cache/unlearning-lens/evals/run-1/checkpoint-10: no evaluation files (expected evals/*.json)",
         "checkpoint-10: no evaluation files (expected evals/*.json)"),
        ("~/.cache/unlearning-lens/demo/full.", "full."),
        ("/models/smollm2-135m + /cache/runs/npo/checkpoint-12", "smollm2-135m + checkpoint-12"),
        (r"C:\Users\me\runs\npo", "npo"),
        ("demo:target</script> and https://example.org/a/b, 1/2, mmlu/acc", "demo:target</script> and "
         "https://example.org/a/b, 1/2, mmlu/acc"),
        ("/single", "/single"),
    ],
)  # fmt: skip
def test_paths_cut_to_their_last_component(text: str, scrubbed: str) -> None:
    assert scrub_paths(text) == scrubbed


def test_public_path() -> None:
    assert public_path("/a/b/run-1/") == "run-1"
    assert public_path(r"C:\a\run-2") == "run-2"
    assert public_path("relative") == "relative"
