"""Figures of the Tradeoffs page: forget vs utility with the Pareto front, truth-ratio and MIA distributions,
metrics by split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.common.errors import UserError
from core.evaluation import metrics
from core.evaluation.ingest import REFERENCE_METHODS, forget_truth_ratios
from core.evaluation.tables import rows_at
from core.present import numbers
from core.present.figures.common import PALETTE, esc

REFERENCE_STYLE = {  # method → (marker symbol, colour, legend label)
    "target": ("star", "#222222", "target (before unlearning)"),
    "base": ("square", "#7f7f7f", "base"),
    "oracle": ("diamond", "#2ca02c", "oracle (retrained without forget set)"),
}


def _step_label(step: Any) -> str:
    return "final" if pd.isna(step) else str(int(step))


def _direction_hint(metric: str) -> str:
    arrow = metrics.direction_arrow(metric)
    if not arrow:
        return ""
    return f" (closer to {arrow.removeprefix('→ ')} better)" if arrow.startswith("→") else f" ({arrow} better)"


def _require_metrics(summary: pd.DataFrame, names: Sequence[str]) -> None:
    missing = [name for name in names if not summary["metric"].eq(name).any()]
    if missing:
        available = ", ".join(sorted(summary["metric"].unique()))
        raise UserError(f"no values for metric {', '.join(missing)}; available: {available}")


def pareto_front(x_better: np.ndarray, y_better: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both axes (values oriented so that higher is better)."""
    x, y = np.asarray(x_better, dtype=float), np.asarray(y_better, dtype=float)
    # [i, j]: point j is at least as good as point i on both axes, and better on one
    at_least = np.greater_equal.outer(x, x).T & np.greater_equal.outer(y, y).T
    strictly = np.greater.outer(x, x).T | np.greater.outer(y, y).T
    return ~np.any(at_least & strictly, axis=1)


def tradeoff_points(summary: pd.DataFrame, x_metric: str, y_metric: str) -> pd.DataFrame:
    """One row per (model, method, step) holding both metrics, runs in step order (final evaluation last)."""
    if x_metric == y_metric:  # one column would become both "x" and "y": refuse rather than fail on the rename
        names = summary.loc[summary["value"].notna(), "metric"].unique()
        usable = [name for name in names if _direction_hint(name)]  # an axis needs a known better direction
        hint = "pick a different metric for one axis" if len(usable) > 1 else "these results hold only one such metric"
        raise UserError(f"both axes show {x_metric}: a tradeoff needs two different metrics ({hint})")
    _require_metrics(summary, [x_metric, y_metric])
    rows = summary[summary["metric"].isin([x_metric, y_metric])]
    wide = rows.groupby(["model", "method", "step", "metric"], dropna=False)["value"].first().unstack("metric")
    wide = wide.reset_index().dropna(subset=[x_metric, y_metric])
    wide = wide.rename(columns={x_metric: "x", y_metric: "y"})[["model", "method", "step", "x", "y"]]
    return wide.sort_values(["model", "step"], na_position="last").reset_index(drop=True)


def _hover(points: pd.DataFrame) -> dict[str, Any]:
    custom = np.column_stack(
        [points["model"].map(esc), points["method"].map(esc), points["step"].map(_step_label)]
    ).tolist()
    template = (
        "%{customdata[0]}<br>method %{customdata[1]}, step %{customdata[2]}<br>"
        f"x %{{x:{numbers.HOVER_NUMBER}}}, y %{{y:{numbers.HOVER_NUMBER}}}"
    )
    return {"customdata": custom, "hovertemplate": template + "<extra></extra>"}


def _run_traces(points: pd.DataFrame) -> list[go.Scatter]:
    methods = sorted(points["method"].unique())
    colours = {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(methods)}
    runs_per_method = points.groupby("method")["model"].nunique()
    traces = []
    for (method, model), run in points.groupby(["method", "model"], sort=True):
        name = method if runs_per_method[method] == 1 else f"{method} · {model}"
        traces.append(
            go.Scatter(x=run["x"], y=run["y"], mode="lines+markers", name=esc(name), legendgroup=esc(method),
                       line={"color": colours[method]}, **_hover(run))
        )  # fmt: skip
    return traces


def _reference_traces(points: pd.DataFrame) -> list[go.Scatter]:
    traces = []
    for (method, model), run in points.groupby(["method", "model"], sort=True):
        symbol, colour, label = REFERENCE_STYLE[method]
        final = run.iloc[[-1]]
        traces.append(
            go.Scatter(x=final["x"], y=final["y"], mode="markers", name=esc(f"{label}: {model}"),
                       marker={"symbol": symbol, "size": 14, "color": colour}, **_hover(final))
        )  # fmt: skip
    return traces


def tradeoff_figure(
    summary: pd.DataFrame, x_metric: str, y_metric: str, *, log_y: bool = False, title: str | None = None
) -> go.Figure:
    """Forget metric vs retain metric: one line per run through its checkpoints, references, Pareto front.

    The front is over unlearning runs (not target/base/oracle), each axis oriented by `metrics.orient`. A given
    `title` is used as is (plotly renders it as HTML); the default is built from escaped metric names.
    """
    points = tradeoff_points(summary, x_metric, y_metric)
    is_reference = points["method"].isin(REFERENCE_METHODS)
    runs, references = points[~is_reference], points[is_reference]
    figure = go.Figure([*_run_traces(runs), *_reference_traces(references)])
    if not runs.empty:
        front = runs[pareto_front(metrics.orient(x_metric, runs["x"]), metrics.orient(y_metric, runs["y"]))]
        front = front.sort_values("x")
        figure.add_trace(
            go.Scatter(x=front["x"], y=front["y"], mode="lines+markers", name="Pareto front",
                       line={"dash": "dot", "color": "#d62728"},
                       marker={"size": 16, "symbol": "circle-open", "color": "#d62728", "line": {"width": 2}},
                       **_hover(front))
        )  # fmt: skip
    figure.update_layout(
        title=title if title is not None else esc(f"{y_metric} vs {x_metric}"),
        xaxis_title=esc(x_metric) + _direction_hint(x_metric),
        yaxis_title=esc(y_metric) + _direction_hint(y_metric),
        yaxis_type="log" if log_y else "linear",
        legend_title_text="method",
    )
    return figure


def forget_quality_utility_figure(summary: pd.DataFrame) -> go.Figure:
    """TOFU's headline plot: forget quality (log scale) against model utility."""
    return tradeoff_figure(
        summary, "model_utility", "forget_quality", log_y=True, title="Forget quality vs model utility (TOFU)"
    )


def ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and the fraction of values ≤ each."""
    ordered = np.sort(np.asarray(values, dtype=float))
    return ordered, np.arange(1, ordered.size + 1) / ordered.size


def _require(values: np.ndarray | None, what: str) -> np.ndarray:
    if values is None or len(values) == 0:
        raise UserError(f"no per-item values for {what}")
    return values


def _distribution_figure(samples: dict[str, np.ndarray], title: str, x_title: str) -> go.Figure:
    """Overlaid histograms (left) and ECDFs (right) of named samples on shared bins."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("histogram", "empirical CDF"))
    low = min(float(np.min(values)) for values in samples.values())
    high = max(float(np.max(values)) for values in samples.values())
    bins = {"start": low, "end": high, "size": (high - low) / 30 or 1.0}
    for i, (name, values) in enumerate(samples.items()):
        colour = PALETTE[i % len(PALETTE)]
        figure.add_trace(
            go.Histogram(x=values, xbins=bins, histnorm="probability", name=esc(name), legendgroup=esc(name),
                         opacity=0.6, marker_color=colour), row=1, col=1
        )  # fmt: skip
        x, y = ecdf(values)
        figure.add_trace(
            go.Scatter(x=x, y=y, mode="lines", line_shape="hv", name=esc(name), legendgroup=esc(name),
                       showlegend=False, line={"color": colour}), row=1, col=2
        )  # fmt: skip
    figure.update_layout(title=title, barmode="overlay")
    figure.update_xaxes(title_text=x_title)
    figure.update_yaxes(title_text="fraction of items", row=1, col=1)
    figure.update_yaxes(title_text="fraction ≤ x", row=1, col=2)
    return figure


def truth_ratio_figure(
    items: pd.DataFrame, model: str, oracle: str, *, step: int | None = None, oracle_step: int | None = None
) -> go.Figure:
    """Forget-set truth ratios of a model vs the oracle; the KS statistic and p-value (forget quality) in the title."""
    model_tr = _require(forget_truth_ratios(items, model, step), f"forget truth ratios of {model}")
    oracle_tr = _require(forget_truth_ratios(items, oracle, oracle_step), f"forget truth ratios of {oracle}")
    ks = metrics.ks_test(model_tr, oracle_tr)
    statistic = f"KS D = {ks.statistic:.3f}, p = {numbers.number(ks.pvalue)}"
    title = f"Forget truth ratios, {esc(model)} vs {esc(oracle)}: {statistic}"
    return _distribution_figure({model: model_tr, oracle: oracle_tr}, title, "truth ratio P(wrong) / P(true)")


def mia_scores(items: pd.DataFrame, model: str, attack: str, split: str, step: int | None = None) -> np.ndarray:
    """Per-item scores of an MIA attack (e.g. mia_min_k) on the forget or holdout split."""
    rows = rows_at(items, model, step)
    rows = rows[rows["metric"].eq(f"{attack}/{split}") & rows["field"].eq("score")]
    return _require(rows["value"].to_numpy(), f"{attack} {split} scores of {model}")


def mia_figure(items: pd.DataFrame, model: str, attack: str = "mia_min_k", *, step: int | None = None) -> go.Figure:
    """Score histograms of forget vs holdout items (left) and the ROC curve behind the MIA AUC (right)."""
    forget, holdout = (mia_scores(items, model, attack, split, step) for split in ("forget", "holdout"))
    auc = metrics.mia_auc(forget, holdout)
    fpr, tpr = metrics.mia_roc(forget, holdout)
    figure = make_subplots(rows=1, cols=2, subplot_titles=("scores (higher = less likely a member)", "ROC"))
    for i, (name, values) in enumerate((("forget", forget), ("holdout", holdout))):
        figure.add_trace(
            go.Histogram(x=values, name=name, opacity=0.6, histnorm="probability", marker_color=PALETTE[i]),
            row=1, col=1,
        )  # fmt: skip
    figure.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"ROC (AUC {auc:.3f})"), row=1, col=2)
    figure.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash", "color": "#999999"}),
        row=1, col=2,
    )  # fmt: skip
    figure.update_layout(title=f"{esc(attack)} on {esc(model)}: AUC = {auc:.3f}", barmode="overlay")
    figure.update_xaxes(title_text="score", row=1, col=1)
    figure.update_xaxes(title_text="false-positive rate (holdout called member)", row=1, col=2)
    figure.update_yaxes(title_text="true-positive rate", row=1, col=2)
    return figure


def _without_split(metric: str, split: str) -> str:
    prefixes = [prefix for prefix, name in metrics.SPLIT_BY_PREFIX.items() if name == split]
    return metric.removeprefix(f"{prefixes[0]}_") if prefixes else metric


def split_bars_figure(
    summary: pd.DataFrame, model: str, *, step: int | None = None, metric_names: Sequence[str] | None = None
) -> go.Figure:
    """Bars of one model's metrics grouped by split (forget, retain, real authors, world facts, holdout)."""
    rows = rows_at(summary, model, step)
    if metric_names is not None:
        _require_metrics(rows, metric_names)
        rows = rows[rows["metric"].isin(metric_names)]
    else:
        per_split = rows["split"].isin(metrics.SPLIT_BY_PREFIX.values()) & ~rows["metric"].str.contains("/")
        rows = rows[per_split & rows["value"].notna()]
    if rows.empty:
        raise UserError(f"no per-split metrics for {model} at step {_step_label(step)}")
    figure = go.Figure()
    for split, group in rows.groupby("split", sort=False):
        labels = [esc(_without_split(name, split)) for name in group["metric"]]
        hover = [esc(name) for name in group["metric"]]
        figure.add_trace(
            go.Bar(x=labels, y=group["value"], name=esc(split), customdata=hover,
                   hovertemplate=f"%{{customdata}}: %{{y:{numbers.HOVER_NUMBER}}}<extra></extra>")
        )  # fmt: skip
    method = rows["method"].iloc[0]
    figure.update_layout(
        title=f"{esc(model)} ({esc(method)}), step {_step_label(step)}: metrics by split",
        barmode="group",
        yaxis_title="value",
    )
    return figure
