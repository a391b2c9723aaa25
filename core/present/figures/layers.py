"""Figures of the Layers page: the logit lens read in words and drawn (LensResult), activation patching and the depth
score (PatchingResult, DepthResult) read together with the lens, hidden-state drift (DriftResult) and weight change
per module and layer (WeightChangeResult)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.analyses.lens import (
    DriftResult,
    HiddenKnowledge,
    LensResult,
    LensSide,
    WeightChangeResult,
    hidden_knowledge_score,
)
from core.analyses.patching import DepthResult, PatchingResult
from core.common.errors import UserError
from core.models.pair import SIDES
from core.present import numbers
from core.present.figures.common import PALETTE, esc, token_axis, token_label

SIDE_COLOURS = {"base": "#7f7f7f", "unlearned": "#d62728"}
SET_COLOURS = {"forget": "#d62728", "retain": "#2ca02c"}  # drift sets; any other set takes a palette colour
# Hidden knowledge worth a note: the unlearned model's answer tokens reach this mean rank in some middle layer and
# lose at least this many nats per token between that layer and the output.
HIDDEN_RANK = 10.0
HIDDEN_SCORE = 1.0


def _layer_axis(layers: Sequence[int]) -> dict:
    """Whole layer numbers, about 15 ticks at most."""
    return {"title_text": "layer (0 = embeddings)", "tick0": 0, "dtick": max(1, math.ceil(len(layers) / 15))}


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
        yaxis={**token_axis(modules), "autorange": "reversed"},
        height=max(300, 80 + 22 * len(modules)),
    )
    return figure


# ============================================================================================== activation patching


def patching_figure(result: PatchingResult) -> go.Figure:
    """Per layer, the answer's log-prob (nats/token) with the other model's stream patched in after that layer: the
    unlearned model on the base's stream, the base on the unlearned's (and on the oracle's), the clean runs dashed."""
    figure = go.Figure()
    curves = [
        ("unlearned run on base's stream", result.patched_logprob, SIDE_COLOURS["unlearned"], "solid"),
        ("base run on unlearned's stream", result.reverse_logprob, SIDE_COLOURS["base"], "solid"),
    ]
    if result.oracle_patched_logprob is not None:
        curves.append(("base run on oracle's stream", result.oracle_patched_logprob, PALETTE[2], "dot"))
    for name, values, colour, dash in curves:
        figure.add_trace(
            go.Scatter(x=result.layers, y=values, name=name, mode="lines+markers",
                       line={"color": colour, "dash": dash},
                       hovertemplate=f"{name}, patched after layer %{{x}}: %{{y:{numbers.HOVER_NUMBER}}} "
                                     "nats/token<extra></extra>"),
        )  # fmt: skip
    for label, value, colour in (
        ("base", result.base_logprob, SIDE_COLOURS["base"]),
        ("unlearned", result.unlearned_logprob, SIDE_COLOURS["unlearned"]),
    ):
        figure.add_hline(
            y=value, line={"dash": "dash", "color": colour}, annotation_text=f"{label} {numbers.number(value)}"
        )
    figure.update_xaxes(**_layer_axis(result.layers))
    figure.update_yaxes(title_text="answer log-prob (nats per token)")
    figure.update_layout(
        title=f"Activation patching ({result.positions} positions): depth score {result.depth_score:.2f}",
        height=400,
        hovermode="x",
    )
    return figure


def patching_frame(result: PatchingResult) -> pd.DataFrame:
    """The curves as a table, one row per layer."""
    frame = pd.DataFrame(
        {
            "layer": result.layers,
            "unlearned ← base": result.patched_logprob,
            "base ← unlearned": result.reverse_logprob,
            "recovery": result.recovery,
            "erasure": result.erasure,
        }
    )
    if result.oracle_patched_logprob is not None:
        frame["base ← oracle"] = result.oracle_patched_logprob
    return frame


def _first_layer(values: Sequence[float], layers: Sequence[int], level: float = 0.5) -> int | None:
    return next((layer for layer, v in zip(layers, values, strict=True) if v >= level), None)


def causal_reading(result: PatchingResult, lens: LensResult | None = None) -> str:
    """One line combining patching and (where run on the same prompt) the logit lens."""
    gap = result.base_logprob - result.unlearned_logprob
    if gap < result.gap_floor:
        return (
            f"The two models give this answer nearly the same log-prob (base {numbers.number(result.base_logprob)}, "
            f"unlearned {numbers.number(result.unlearned_logprob)} nats/token): there is no loss to locate."
        )
    half = _first_layer(result.erasure, result.layers)
    last = result.layers[-1]
    kind = "deep" if result.depth_score >= 0.5 else "shallow"
    text = (
        f"Half of the {numbers.number(gap)} nats/token the answer lost is carried by the unlearned model's stream "
        f"from layer {half} of {last} on: a {kind} change (depth score {result.depth_score:.2f})"
    )
    if result.oracle_depth_score is not None:
        text += f", {result.oracle_depth_score:.2f} against the oracle"
    same_prompt = lens is not None and (lens.prompt, lens.answer) == (result.prompt, result.answer)
    if same_prompt:
        reading = hidden_knowledge_reading(lens)
        if reading.hidden and half is not None and half > reading.unlearned.peak_layer:
            text += (
                f"; the logit lens still reads the answer at layer {reading.unlearned.peak_layer}, before that: "
                "hidden, not erased"
            )
        elif reading.hidden:
            text += f"; the logit lens's peak at layer {reading.unlearned.peak_layer} is a trace the later layers drop"
        else:
            text += "; the logit lens finds no layer that knows more than the output"
    return text + "."


def depth_figure(result: DepthResult) -> go.Figure:
    """Left: each item's depth score per set (points and box); right: the mean erasure ratio per layer per set."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("depth score per item", "mean erasure ratio per layer"))
    for i, (name, scores) in enumerate(result.sets.items()):
        colour = SET_COLOURS.get(name, PALETTE[i % len(PALETTE)])
        label = f"{name} ({scores.n_items} items, mean {scores.mean_depth:.2f})"
        figure.add_trace(
            go.Box(y=scores.depth, name=esc(name), boxpoints="all", marker={"color": colour}, legendgroup=esc(name),
                   showlegend=False, hovertemplate=f"{esc(name)}: %{{y:.3f}}<extra></extra>"),
            row=1, col=1,
        )  # fmt: skip
        figure.add_trace(
            go.Scatter(x=result.layers, y=scores.erasure, name=esc(label), mode="lines+markers",
                       line={"color": colour}, legendgroup=esc(name),
                       hovertemplate=f"{esc(name)}, layer %{{x}}: %{{y:.3f}}<extra></extra>"),
            row=1, col=2,
        )  # fmt: skip
    figure.update_yaxes(range=[0, 1.02])
    figure.update_xaxes(**_layer_axis(result.layers), row=1, col=2)
    figure.update_layout(title="Unlearning depth: forget vs retain", height=380)
    return figure


def depth_reading(result: DepthResult) -> str:
    """The forget set's mean depth score against the retain set's, in words."""
    parts = [f"{name}: {s.mean_depth:.2f} over {s.n_items} items" for name, s in result.sets.items()]
    forget, retain = result.sets.get("forget"), result.sets.get("retain")
    text = "Mean depth score — " + "; ".join(parts) + "."
    if forget and retain:
        verdict = "deeper than" if forget.mean_depth > retain.mean_depth else "not deeper than"
        text += f" The change on the forget set is {verdict} on the retain set."
    return text
