"""Tradeoff / metric figures: trace data checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_curve

from core.common.errors import UserError
from core.evaluation.ingest import SUMMARY_COLUMNS, IngestResult, ingest
from core.evaluation.results import EXAMPLE_RESULTS
from core.present import numbers
from core.present.figures import tradeoffs as figures

FULL = "tofu_Llama-3.2-1B-Instruct_full"
RETAIN90 = "tofu_Llama-3.2-1B-Instruct_retain90"
X, Y = "forget_Q_A_Prob", "model_utility"  # lower is better on x, higher on y


@pytest.fixture(scope="module")
def real_tofu() -> IngestResult:
    return ingest([EXAMPLE_RESULTS / FULL, EXAMPLE_RESULTS / RETAIN90])


def stored_eval(run: str) -> dict:
    path = EXAMPLE_RESULTS / run
    return json.loads(next(path.rglob("TOFU_EVAL.json")).read_text())


def summary_frame(points: list[tuple[str, str, int | None, float, float]]) -> pd.DataFrame:
    rows = []
    for model, method, step, x, y in points:
        rows.append((model, method, step, "forget", X, x, "test"))
        rows.append((model, method, step, "utility", Y, y, "test"))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"step": "Int64"})


def brute_force_front(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """Points (higher is better on both) that no other point matches on both and beats on one."""
    front = set()
    for i, (xi, yi) in enumerate(points):
        beaten = any(xj >= xi and yj >= yi and (xj > xi or yj > yi) for j, (xj, yj) in enumerate(points) if j != i)
        if not beaten:
            front.add((xi, yi))
    return front


@pytest.fixture
def synthetic() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    points = [("run_target", "target", None, 0.95, 0.60), ("run_retain90", "oracle", None, 0.10, 0.59)]
    for method in ("GradDiff", "NPO", "SimNPO"):
        for step in (5, 10, 15):
            points.append((f"run_{method}", method, step, *np.round(rng.uniform(0, 1, 2), 3)))
        points.append((f"run_{method}", method, None, *np.round(rng.uniform(0, 1, 2), 3)))
    points.append(("run_NPO_b", "NPO", None, 0.05, 0.95))  # a second NPO run dominating the others
    return summary_frame(points)


def test_pareto_front_matches_brute_force_on_random_points() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 6, 30).astype(float), rng.integers(0, 6, 30).astype(float)  # with ties
        mask = figures.pareto_front(x, y)
        assert set(zip(x[mask], y[mask], strict=True)) == brute_force_front(list(zip(x, y, strict=True)))
        kept = list(zip(x[mask], y[mask], strict=True))
        assert len(kept) == sum(1 for point in zip(x, y, strict=True) if point in set(kept))


def test_tradeoff_figure_pareto_front_and_reference_markers(synthetic: pd.DataFrame) -> None:
    figure = figures.tradeoff_figure(synthetic, X, Y)
    runs = synthetic[~synthetic["method"].isin(["target", "oracle"])]
    candidates = list(zip(runs[runs["metric"] == X]["value"], runs[runs["metric"] == Y]["value"], strict=True))
    expected = brute_force_front([(-x, y) for x, y in candidates])  # x is a forget probability: lower is better
    [front] = [trace for trace in figure.data if trace.name == "Pareto front"]
    assert {(-x, y) for x, y in zip(front.x, front.y, strict=True)} == expected
    assert list(front.x) == sorted(front.x)
    by_name = {trace.name: trace for trace in figure.data}
    target = by_name["target (before unlearning): run_target"]
    oracle = by_name["oracle (retrained without forget set): run_retain90"]
    assert (target.x[0], target.y[0], target.marker.symbol) == (0.95, 0.60, "star")
    assert (oracle.x[0], oracle.y[0], oracle.marker.symbol) == (0.10, 0.59, "diamond")
    assert "(↓ better)" in figure.layout.xaxis.title.text and "(↑ better)" in figure.layout.yaxis.title.text


def test_tradeoff_lines_follow_checkpoint_steps(synthetic: pd.DataFrame) -> None:
    figure = figures.tradeoff_figure(synthetic, X, Y)
    trace = next(trace for trace in figure.data if trace.name == "GradDiff")
    run = synthetic[(synthetic["model"] == "run_GradDiff") & (synthetic["metric"] == X)]
    ordered = pd.concat([run[run["step"].notna()].sort_values("step"), run[run["step"].isna()]])
    assert list(trace.x) == ordered["value"].tolist()
    assert [row[2] for row in trace.customdata] == ["5", "10", "15", "final"]
    names = {trace.name for trace in figure.data}
    assert {"NPO · run_NPO", "NPO · run_NPO_b", "SimNPO"} <= names  # two NPO runs are told apart


def test_forget_quality_vs_utility_on_real_runs(real_tofu: IngestResult) -> None:
    figure = figures.forget_quality_utility_figure(real_tofu.summary)
    assert figure.layout.yaxis.type == "log"
    full = stored_eval(f"{FULL}/evals_forget10")
    [target] = [trace for trace in figure.data if trace.name.startswith("target")]
    assert (target.x[0], target.y[0]) == (full["model_utility"]["agg_value"], full["forget_quality"]["agg_value"])
    assert not any(trace.name.startswith("oracle") for trace in figure.data)  # its forget quality is undefined


def test_names_from_data_are_html_escaped() -> None:
    evil = "<img src=x onerror=alert(1)>"
    frame = summary_frame([(evil, "GradDiff", 1, 0.3, 0.5), ("run", evil, None, 0.2, 0.4)])
    figure = figures.tradeoff_figure(frame, X, Y)
    text = json.dumps(figure.to_plotly_json(), default=str)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    with pytest.raises(UserError, match="available: forget_Q_A_Prob, model_utility"):
        figures.tradeoff_figure(frame, X, "forget_quality")


def test_truth_ratio_figure_histogram_ecdf_and_ks_title(real_tofu: IngestResult) -> None:
    figure = figures.truth_ratio_figure(real_tofu.items, FULL, RETAIN90)
    samples = {
        run: np.array([item["score"] for item in stored_eval(path)["forget_truth_ratio"]["value_by_index"].values()])
        for run, path in ((FULL, f"{FULL}/evals_forget10"), (RETAIN90, RETAIN90))
    }
    histograms = [trace for trace in figure.data if trace.type == "histogram"]
    curves = [trace for trace in figure.data if trace.type == "scatter"]
    for histogram, curve, (name, values) in zip(histograms, curves, samples.items(), strict=True):
        assert histogram.name == name
        np.testing.assert_array_equal(histogram.x, values)
        np.testing.assert_array_equal(curve.x, np.sort(values))
        fraction_at_most = np.array([np.mean(values <= x) for x in curve.x])
        np.testing.assert_allclose(curve.y, fraction_at_most)
    ks = stats.ks_2samp(samples[FULL], samples[RETAIN90])
    assert f"KS D = {ks.statistic:.3f}, p = {numbers.number(ks.pvalue)}" in figure.layout.title.text
    assert f"{ks.pvalue:.3g}" == f"{stored_eval(f'{FULL}/evals_forget10')['forget_quality']['agg_value']:.3g}"


def test_ecdf_by_hand() -> None:
    x, y = figures.ecdf(np.array([3.0, 1.0, 2.0, 2.0]))
    assert x.tolist() == [1.0, 2.0, 2.0, 3.0] and y.tolist() == [0.25, 0.5, 0.75, 1.0]


def test_mia_figure_roc_and_auc(real_tofu: IngestResult) -> None:
    figure = figures.mia_figure(real_tofu.items, FULL, "mia_min_k")
    entry = stored_eval(f"{FULL}/evals_forget10")["mia_min_k"]
    forget = [item["score"] for item in entry["forget"]["value_by_index"].values()]
    holdout = [item["score"] for item in entry["holdout"]["value_by_index"].values()]
    fpr, tpr, _ = roc_curve([0] * len(forget) + [1] * len(holdout), forget + holdout)
    roc = next(trace for trace in figure.data if trace.name.startswith("ROC"))
    np.testing.assert_array_equal(roc.x, fpr)
    np.testing.assert_array_equal(roc.y, tpr)
    assert f"AUC = {entry['auc']:.3f}" in figure.layout.title.text
    histograms = {trace.name: trace for trace in figure.data if trace.type == "histogram"}
    np.testing.assert_array_equal(histograms["forget"].x, forget)
    np.testing.assert_array_equal(histograms["holdout"].x, holdout)
    with pytest.raises(UserError, match="mia_nope forget scores"):
        figures.mia_figure(real_tofu.items, FULL, "mia_nope")


def test_split_bars_show_the_stored_values(real_tofu: IngestResult) -> None:
    figure = figures.split_bars_figure(real_tofu.summary, FULL)
    stored = stored_eval(f"{FULL}/evals_forget10")
    prefixes = {"forget": "forget_", "retain": "retain_", "real_authors": "ra_", "world_facts": "wf_"}
    assert {trace.name for trace in figure.data} == set(prefixes)
    for trace in figure.data:
        for label, value, full_name in zip(trace.x, trace.y, trace.customdata, strict=True):
            assert full_name in (prefixes[trace.name] + label, label)
            assert value == stored[full_name]["agg_value"]
    forget = next(trace for trace in figure.data if trace.name == "forget")
    assert "Q_A_Prob" in forget.x and "exact_memorization" in forget.x
    chosen = figures.split_bars_figure(real_tofu.summary, FULL, metric_names=["model_utility", "retain_Q_A_Prob"])
    assert sorted(value for trace in chosen.data for value in trace.y) == sorted(
        [stored["model_utility"]["agg_value"], stored["retain_Q_A_Prob"]["agg_value"]]
    )
    with pytest.raises(UserError, match="no per-split metrics"):
        figures.split_bars_figure(real_tofu.summary, FULL, step=3)
