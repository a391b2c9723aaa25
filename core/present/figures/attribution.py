"""Figures of the Attribution page: how much each prompt token drives the answer under each model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.analyses.attribution import AttributionResult
from core.common.errors import UserError
from core.present.figures.common import esc, token_axis, token_label
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
