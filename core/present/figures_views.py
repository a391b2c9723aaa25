"""Plotly figures of the attribution and layer views: they take AttributionResult, LensResult, DriftResult and
WeightChangeResult (never tensors), for the dashboard's Attribution and Layers pages and the reports.

Tokens sit on numeric axes (position 0, 1, …) with escaped tick labels, so a repeated token keeps its own cell and
the prompt's order, and a token such as `<script>` shows as text: plotly renders tick labels and hover text as HTML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.analyses.attribution import AttributionResult
from core.analyses.lens import (
    DriftResult,
    HiddenKnowledge,
    LensResult,
    LensSide,
    WeightChangeResult,
    hidden_knowledge_score,
)
from core.common.errors import UserError
from core.models.pair import SIDES
from core.present.figures import PALETTE, esc
from core.present.highlight import NEGATIVE_RGB, POSITIVE_RGB

MATRIX_SIDES = {"base": "base model", "unlearned": "unlearned model", "delta": "Δ (unlearned − base)"}
SIDE_COLOURS = {"base": "#7f7f7f", "unlearned": "#d62728"}
SET_COLOURS = {"forget": "#d62728", "retain": "#2ca02c"}  # drift sets; any other set takes a palette colour
# Hidden knowledge worth a note: the unlearned model's answer tokens reach this mean rank in some middle layer and
# lose at least this many nats per token between that layer and the output.
HIDDEN_RANK = 10.0
HIDDEN_SCORE = 1.0
# Red for negative, white at 0, blue for positive: the Probe page's colours (core.present.highlight).
DIVERGING = [[0.0, f"rgb{NEGATIVE_RGB}"], [0.5, "rgb(255, 255, 255)"], [1.0, f"rgb{POSITIVE_RGB}"]]
_VISIBLE = str.maketrans({"\n": "↵", "\t": "→", "\r": "␍"})


def token_label(text: str) -> str:
    """A token as an escaped, visible tick label (newline and tab shown as symbols, the empty string as ∅)."""
    return esc(text.translate(_VISIBLE)) if text else "∅"


def _token_axis(tokens: Sequence[str]) -> dict:
    """Numeric positions with the tokens as tick labels: duplicates stay apart and in order."""
    return {"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [token_label(t) for t in tokens]}


def _layer_axis(layers: Sequence[int]) -> dict:
    """Whole layer numbers, about 15 ticks at most."""
    return {"title_text": "layer (0 = embeddings)", "tick0": 0, "dtick": max(1, math.ceil(len(layers) / 15))}


def _limit(*matrices: Sequence[Sequence[float]]) -> float:
    """Symmetric colour limit: the largest |value| (1 when all are zero, so the scale stays valid)."""
    largest = max((abs(v) for matrix in matrices for row in matrix for v in row), default=0.0)
    return largest or 1.0


# ============================================================================================== attribution


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
    figure.update_xaxes(**_token_axis(result.prompt_tokens), row=3, col=1)
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
        xaxis={**_token_axis(result.prompt_tokens), "title": "prompt"},
        yaxis={**_token_axis(result.answer_tokens), "title": "answer", "autorange": "reversed"},
        height=max(260, 60 + 28 * len(result.answer_tokens)),
        margin={"l": 20, "r": 20, "t": 50, "b": 40},
    )
    return figure


# ============================================================================================== logit lens


def mean_rank(lens: LensSide) -> list[float]:
    """Per layer, the answer tokens' mean rank (1 = the lens's top token)."""
    return np.asarray(lens.rank, dtype=float).mean(axis=1).tolist()


def mean_probability(lens: LensSide) -> list[float]:
    """Per layer, exp(mean token log-prob): the per-token probability whose peak is hidden_knowledge's peak."""
    return np.exp(np.asarray(lens.logprob, dtype=float).mean(axis=1)).tolist()


@dataclass(frozen=True)
class HiddenReading:
    """The lens read in words, with the numbers behind it."""

    hidden: bool  # the unlearned model knows the answer in a middle layer and suppresses it later
    text: str
    unlearned: HiddenKnowledge
    base: HiddenKnowledge
    final_mean_rank: float


def _rank_text(rank: float) -> str:
    return f"#{rank:.0f}" if float(rank).is_integer() else f"at mean rank {rank:.1f}"


def hidden_knowledge_reading(result: LensResult) -> HiddenReading:
    """Whether the unlearned model still ranks the answer high in a middle layer and suppresses it only at the end."""
    knowledge = {side: hidden_knowledge_score(result, side) for side in SIDES}
    unlearned, base = knowledge["unlearned"], knowledge["base"]
    final_rank = mean_rank(result.unlearned)[-1]
    last = result.layers[-1]
    tokens = f"over its {len(result.answer_tokens)} tokens" if len(result.answer_tokens) > 1 else "one token"
    hidden = unlearned.peak_layer < last and unlearned.peak_mean_rank <= HIDDEN_RANK and unlearned.score >= HIDDEN_SCORE
    if hidden:
        text = (
            f"The unlearned model still ranks the answer {_rank_text(unlearned.peak_mean_rank)} at layer "
            f"{unlearned.peak_layer} and suppresses it only in the last layers: {_rank_text(final_rank)} at the "
            f"output (layer {last}), {unlearned.score:.2f} nats per token lost after layer {unlearned.peak_layer} "
            f"({tokens}; the base model loses {base.score:.2f})."
        )
    elif unlearned.peak_layer == last:
        text = (
            f"The unlearned model gives the answer its highest probability at its output (layer {last}, "
            f"{_rank_text(final_rank)}): no middle layer knows more than it says."
        )
    else:
        text = (
            f"The unlearned model's answer peaks at layer {unlearned.peak_layer} "
            f"({_rank_text(unlearned.peak_mean_rank)}) and ends {_rank_text(final_rank)} at layer {last}, "
            f"{unlearned.score:.2f} nats per token lower (the base model: {base.score:.2f}); below the "
            f"hidden-knowledge bar (rank ≤ {HIDDEN_RANK:g} and ≥ {HIDDEN_SCORE:g} nat per token lost)."
        )
    return HiddenReading(hidden, text, unlearned, base, final_rank)


def _lens_lines(result: LensResult, by_token: bool) -> list[tuple[str, str, str, list[float], list[float]]]:
    """(side, legend name, colour, ranks, probabilities) per line."""
    lines = []
    for side in SIDES:
        lens: LensSide = getattr(result, side)
        if not by_token:
            lines.append((side, f"{side} (answer mean)", SIDE_COLOURS[side], mean_rank(lens), mean_probability(lens)))
            continue
        for t, token in enumerate(result.answer_tokens):
            ranks = [float(row[t]) for row in lens.rank]
            probs = [math.exp(row[t]) for row in lens.logprob]
            lines.append((side, f"{side} · {t}: {token_label(token)}", PALETTE[t % len(PALETTE)], ranks, probs))
    return lines


def logit_lens_figure(lens_result: LensResult, by_token: bool = False) -> go.Figure:
    """Per layer, the answer's rank (log axis, #1 on top) and probability under both models; a note when the
    unlearned model still ranks the answer high in a middle layer (hidden_knowledge_reading)."""
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("rank of the answer (1 = top token)", "probability of the answer")
    )
    for side, name, colour, ranks, probs in _lens_lines(lens_result, by_token):
        dash = "dot" if side == "base" else "solid"
        style = {"line": {"color": colour, "dash": dash}, "legendgroup": name, "name": name, "mode": "lines+markers"}
        figure.add_trace(
            go.Scatter(x=lens_result.layers, y=ranks, hovertemplate="layer %{x}: rank %{y:.4g}", **style), row=1, col=1
        )
        figure.add_trace(
            go.Scatter(x=lens_result.layers, y=probs, showlegend=False, hovertemplate="layer %{x}: p %{y:.4g}",
                       **style), row=1, col=2,
        )  # fmt: skip
    figure.update_yaxes(type="log", autorange="reversed", title_text="rank", row=1, col=1)
    figure.update_yaxes(range=[0, 1], title_text="probability", row=1, col=2)
    figure.update_xaxes(**_layer_axis(lens_result.layers))
    reading = hidden_knowledge_reading(lens_result)
    if reading.hidden:
        figure.add_vline(x=reading.unlearned.peak_layer, line={"dash": "dash", "color": SIDE_COLOURS["unlearned"]})
        figure.add_annotation(
            text=f"hidden knowledge: unlearned peaks at layer {reading.unlearned.peak_layer}",
            xref="paper", yref="paper", x=0.0, y=-0.22, showarrow=False, font={"color": SIDE_COLOURS["unlearned"]},
        )  # fmt: skip
    figure.update_layout(
        title="Logit lens: where the answer appears and disappears", height=420, margin={"b": 90}, hovermode="x"
    )
    return figure


# ============================================================================================== drift and weights


DRIFT_PANELS = {
    "cosine": "cosine(h_base, h_unlearned)",
    "norm_change": "relative norm change",
    "distance": "‖h_u − h_b‖ / ‖h_b‖",
}


def drift_figure(drift_result: DriftResult) -> go.Figure:
    """Per layer, cosine similarity, relative norm change and relative distance, one line per set."""
    figure = make_subplots(rows=1, cols=len(DRIFT_PANELS), subplot_titles=list(DRIFT_PANELS.values()))
    for i, (name, drift) in enumerate(drift_result.sets.items()):
        colour = SET_COLOURS.get(name, PALETTE[i % len(PALETTE)])
        label = f"{name} ({drift.n_items} items)"
        for col, panel in enumerate(DRIFT_PANELS, start=1):
            figure.add_trace(
                go.Scatter(x=drift_result.layers, y=getattr(drift, panel), mode="lines+markers", name=esc(label),
                           legendgroup=esc(name), showlegend=col == 1, line={"color": colour},
                           hovertemplate=f"{esc(name)}, layer %{{x}}: %{{y:.4g}}<extra></extra>"),
                row=1, col=col,
            )  # fmt: skip
    figure.update_xaxes(**_layer_axis(drift_result.layers))
    figure.update_layout(title="Hidden-state drift, base → unlearned", height=380)
    return figure


def weight_change_grid(weight_result: WeightChangeResult) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(modules, columns, z): one row per module, one column per layer plus "other" for parameters outside the
    layers (embeddings, final norm, head); z[m][c] = ‖ΔW‖/‖W‖, None where the module has no such parameter."""
    if not weight_result.changes:
        raise UserError("the weight-change result is empty: the models have no parameters to compare")
    layers = sorted({c.layer for c in weight_result.changes if c.layer is not None})
    outside = any(c.layer is None for c in weight_result.changes)
    columns = [str(layer) for layer in layers] + (["other"] if outside else [])
    modules = list(dict.fromkeys(c.module for c in sorted(weight_result.changes, key=lambda c: c.layer is None)))
    z: list[list[float | None]] = [[None] * len(columns) for _ in modules]
    row, col = {m: i for i, m in enumerate(modules)}, {c: i for i, c in enumerate(columns)}
    for change in weight_result.changes:
        z[row[change.module]][col["other" if change.layer is None else str(change.layer)]] = change.relative_change
    return modules, columns, z


def weight_change_figure(weight_result: WeightChangeResult) -> go.Figure:
    """‖ΔW‖/‖W‖ per module (rows) × layer (columns); parameters outside the layers in an "other" column."""
    modules, columns, z = weight_change_grid(weight_result)
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=columns,
            y=list(range(len(modules))),
            text=[[f"{esc(m)}, layer {c}" for c in columns] for m in modules],
            hovertemplate="%{text}<br>‖ΔW‖/‖W‖ = %{z:.4g}<extra></extra>",
            colorscale="Reds",
            zmin=0,
            colorbar={"title": {"text": "‖ΔW‖/‖W‖"}},
        )
    )
    figure.update_layout(
        title="Weight change per module and layer",
        xaxis={"title": "layer", "type": "category"},
        yaxis={**_token_axis(modules), "autorange": "reversed"},
        height=max(300, 80 + 22 * len(modules)),
    )
    return figure
