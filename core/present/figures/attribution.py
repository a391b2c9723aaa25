"""Figures of the Attribution page: how much each prompt token drives the answer under each model, whether a map adds
up to what it claims to explain, and which method's map is most faithful on the prompt (deletion / insertion)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.analyses.attribution import AttributionResult
from core.analyses.attribution.faithfulness import Faithfulness
from core.common.errors import UserError
from core.present import numbers
from core.present.figures.common import PALETTE, esc, token_axis, token_label
from core.present.highlight import NEGATIVE_RGB, POSITIVE_RGB

MATRIX_SIDES = {"base": "base model", "unlearned": "unlearned model", "delta": "Δ (unlearned − base)"}
# Red for negative, white at 0, blue for positive: the Probe page's colours (core.present.highlight).
DIVERGING = [[0.0, f"rgb{NEGATIVE_RGB}"], [0.5, "rgb(255, 255, 255)"], [1.0, f"rgb{POSITIVE_RGB}"]]


def _limit(*matrices: Sequence[Sequence[float]]) -> float:
    """Symmetric colour limit: the largest |value| (1 when all are zero, so the scale stays valid)."""
    largest = max((abs(v) for matrix in matrices for row in matrix for v in row), default=0.0)
    return largest or 1.0


def prompt_attributions(result: AttributionResult) -> dict[str, list[float]]:
    """Per prompt feature, the whole answer's attribution for base, unlearned and Δ.

    Answer rows split the answer's log-prob into a sum, and every method is linear in its outputs, so the whole
    answer's map is the sum of the rows (a single row when the result is not per token).
    """
    return {side: np.asarray(getattr(result, side), dtype=float).sum(axis=0).tolist() for side in MATRIX_SIDES}


def _hover_tokens(result: AttributionResult) -> list[str]:
    return [f"{i}: {token_label(token)}" for i, token in enumerate(result.prompt_tokens)]


def attribution_heatmap(result: AttributionResult) -> go.Figure:
    """Three rows over the prompt tokens: base, unlearned (one shared scale) and Δ (its own scale), all centred on 0."""
    rows = prompt_attributions(result)
    figure = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=list(MATRIX_SIDES.values())
    )
    hover = _hover_tokens(result)
    for i, side in enumerate(MATRIX_SIDES, start=1):
        figure.add_trace(
            go.Heatmap(
                z=[rows[side]],
                x=list(range(len(result.prompt_tokens))),
                y=[MATRIX_SIDES[side]],
                text=[hover],
                hovertemplate="%{text}<br>%{z:.4g}<extra>" + side + "</extra>",
                coloraxis="coloraxis2" if side == "delta" else "coloraxis",
                name=side,
            ),
            row=i,
            col=1,
        )
        figure.update_yaxes(showticklabels=False, row=i, col=1)
    sides_limit = _limit([rows["base"]], [rows["unlearned"]])
    delta_limit = _limit([rows["delta"]])
    figure.update_layout(
        title=f"Attribution to the prompt ({esc(result.method)}, {esc(result.settings.granularity)} level)",
        coloraxis={"colorscale": DIVERGING, "cmin": -sides_limit, "cmax": sides_limit,
                   "colorbar": {"title": {"text": "base / unl."}, "y": 0.7, "len": 0.6}},
        coloraxis2={"colorscale": DIVERGING, "cmin": -delta_limit, "cmax": delta_limit,
                    "colorbar": {"title": {"text": "Δ"}, "y": 0.14, "len": 0.32, "nticks": 4}},
        height=420,
        margin={"l": 20, "r": 20, "t": 70, "b": 40},
    )  # fmt: skip
    figure.update_xaxes(**token_axis(result.prompt_tokens), row=3, col=1)
    return figure


def attribution_matrix_figure(result: AttributionResult, side: str) -> go.Figure:
    """Answer rows (top to bottom) × prompt features for one side ("base", "unlearned" or "delta"), centred on 0."""
    if side not in MATRIX_SIDES:
        raise UserError(f"unknown side {side!r}; choose one of {', '.join(MATRIX_SIDES)}")
    matrix = getattr(result, side)
    limit = _limit(matrix)
    prompt = _hover_tokens(result)
    text = [[f"{token_label(answer)} ← {p}" for p in prompt] for answer in result.answer_tokens]
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(range(len(result.prompt_tokens))),
            y=list(range(len(result.answer_tokens))),
            text=text,
            hovertemplate="%{text}<br>%{z:.4g}<extra></extra>",
            colorscale=DIVERGING,
            zmin=-limit,
            zmax=limit,
        )
    )
    figure.update_layout(
        title=f"Per answer {esc(result.settings.granularity)}: {MATRIX_SIDES[side]}",
        xaxis={**token_axis(result.prompt_tokens), "title": "prompt"},
        yaxis={**token_axis(result.answer_tokens), "title": "answer", "autorange": "reversed"},
        height=max(260, 60 + 28 * len(result.answer_tokens)),
        margin={"l": 20, "r": 20, "t": 50, "b": 40},
    )
    return figure


# ============================================================================================== does the map add up


CONVERGENCE_SHARE = 0.05  # |convergence delta| beyond this share of what the map explains: the map does not add up
CONVERGENCE_FLOOR = 0.05  # nats: below this the delta is negligible whatever it explains (a change near 0)


@dataclass(frozen=True)
class Completeness:
    """One side's map against the number it should sum to (integrated gradients' F(x) − F(baseline), AttnLRP's
    logit): the delta, its share of that number, and whether it is beyond CONVERGENCE_SHARE."""

    side: str
    error: float
    explained: float
    share: float | None  # |error| / |explained| (None: nothing explained)
    adds_up: bool


def completeness(result: AttributionResult) -> list[Completeness]:
    """Per side, whether the map adds up; empty for methods without a completeness axiom (ablation, Shapley…)."""
    if not result.convergence_delta:
        return []
    checks = []
    for side in ("base", "unlearned"):
        error = float(sum(result.convergence_delta[side]))
        explained = float(sum(result.explained_change(side)))
        share = abs(error) / abs(explained) if explained else None
        adds_up = abs(error) <= max(CONVERGENCE_FLOOR, CONVERGENCE_SHARE * abs(explained))
        checks.append(Completeness(side, error, explained, share, adds_up))
    return checks


def _remedy(result: AttributionResult) -> str:
    if result.method == "integrated_gradients":
        return (
            f"raise the IG steps (now {result.settings.n_steps}), try another baseline (now "
            f"{result.settings.baseline!r}), or use a method that adds up here (see which map to believe below)"
        )
    if result.method == "attn_lrp":
        return "switch the LRP rule to cp (conserves exactly), or compare with another method below"
    return "try another method (see which map to believe below)"


def completeness_warning(result: AttributionResult) -> str | None:
    """A sentence saying which side's map does not add up and what to do, or None when every map adds up."""
    failing = [check for check in completeness(result) if not check.adds_up]
    if not failing:
        return None
    parts = [
        f"the {c.side} model's map sums to {numbers.number(c.explained + c.error, sign=True)} but should to "
        f"{numbers.number(c.explained, sign=True)} (convergence delta {numbers.number(c.error, sign=True)}"
        + (f", {numbers.percent(c.share)} of what it explains)" if c.share is not None else ")")
        for c in failing
    ]
    return f"This map does not add up: {'; '.join(parts)}. Do not read it as is: {_remedy(result)}."


# ============================================================================================== faithfulness


def faithfulness_figure(report: Faithfulness, side: str) -> go.Figure:
    """Deletion (left) and insertion (right) curves of every method's order on `side`, and the random floor."""
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("deletion: most relevant first", "insertion: most relevant first")
    )
    lines = [*report.curves[side].items(), ("random order", report.random[side])]
    for i, (name, curve) in enumerate(lines):
        style = {"color": "#7f7f7f", "dash": "dot"} if name == "random order" else {"color": PALETTE[i % len(PALETTE)]}
        label = f"{name.replace('_', ' ')} (between {numbers.number(curve.between)})"
        for col, values in ((1, curve.deletion), (2, curve.insertion)):
            figure.add_trace(
                go.Scatter(x=report.fractions, y=values, mode="lines+markers", name=esc(label), legendgroup=esc(name),
                           showlegend=col == 1, line=style,
                           hovertemplate=f"{esc(name)}: %{{x:.0%}} → %{{y:{numbers.HOVER_NUMBER}}}<extra></extra>"),
                row=1, col=col,
            )  # fmt: skip
    figure.update_xaxes(title_text="share of prompt features replaced / restored", tickformat=".0%")
    figure.update_yaxes(title_text="answer log-prob (nats)", row=1, col=1)
    figure.update_layout(title=f"Which map to believe: deletion and insertion on the {side} model", height=400)
    return figure


def faithfulness_frame(report: Faithfulness) -> pd.DataFrame:
    """One row per side and method (and the random order): deletion, insertion and the area between them."""
    records = [
        {"side": side, "method": name, "deletion_area": c.deletion_area, "insertion_area": c.insertion_area,
         "between": c.between}
        for side in report.curves
        for name, c in [*report.curves[side].items(), ("random order", report.random[side])]
    ]  # fmt: skip
    return pd.DataFrame(records)


def faithfulness_reading(report: Faithfulness) -> str:
    """Which method's map tracks each model's behaviour best on this prompt, against a random order."""
    parts = []
    for side in report.curves:
        best = report.best(side)
        curve, floor = report.curves[side][best], report.random[side]
        parts.append(
            f"for the {side} model, {best.replace('_', ' ')} (area between its curves "
            f"{numbers.number(curve.between)} nats, a random order {numbers.number(floor.between)})"
        )
    return "The map that explains each model's behaviour best on this prompt: " + "; ".join(parts) + "."
