"""Figures of the Checkpoints page: for one prompt and answer under a base and many models (MultiProbeResult), the
answer's log-prob against training step (one line per run, single models as reference lines), the per-token shift
as a token × model heatmap, and the logit lens across checkpoints as a layer × step map (CheckpointLens).

Every point of the trajectory carries its model's index (0-based, in the result's order) as customdata, so a click
on the chart names the model (`model_from_selection`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from core.analyses.multi import CheckpointLens, MultiProbeResult
from core.common.errors import UserError
from core.present.figures.common import PALETTE, esc, token_axis

BASE_COLOUR = "#7f7f7f"
REFERENCE_DASHES = ("dash", "dot", "dashdot", "longdash")
TOP_RANK = 10.0  # "ranks high": a mean rank at or under this (the Layers page's hidden-knowledge threshold)


@dataclass(frozen=True)
class Trajectory:
    """The models of a result grouped for the chart: `runs` maps a run's name to its (step, model index) points in
    step order; `references` are the models without a step (target, oracle, single models)."""

    runs: dict[str, list[tuple[int, int]]]
    references: list[int]


def trajectories(runs: Sequence[str | None], steps: Sequence[int | None]) -> Trajectory:
    grouped: dict[str, list[tuple[int, int]]] = {}
    references = []
    for index, (run, step) in enumerate(zip(runs, steps, strict=True)):
        if run is None or step is None:
            references.append(index)
        else:
            grouped.setdefault(run, []).append((step, index))
    return Trajectory({run: sorted(points) for run, points in grouped.items()}, references)


def trajectory_figure(
    result: MultiProbeResult, runs: Sequence[str | None], steps: Sequence[int | None], base: str
) -> go.Figure:
    """Answer log-prob (sum over its tokens) against training step: one line per run, a dashed line per single
    model and one for the base. Click a point: its customdata is the model's index."""
    if not result.results:
        raise UserError("no model was probed")
    values = result.answer_logprobs()
    grouped = trajectories(runs, steps)
    figure = go.Figure()
    for colour, (run, points) in zip(PALETTE * 8, grouped.runs.items(), strict=False):
        figure.add_trace(
            go.Scatter(
                x=[step for step, _ in points], y=[values[i] for _, i in points], mode="lines+markers",
                name=esc(run), line={"color": colour}, marker={"size": 9},
                customdata=[[i, esc(result.models[i])] for _, i in points],
                hovertemplate="%{customdata[1]}<br>step %{x}<br>answer log-prob %{y:.3f}<extra></extra>",
            )
        )  # fmt: skip
    all_steps = [step for points in grouped.runs.values() for step, _ in points] or [0, 1]
    span = [min(all_steps), max(all_steps)]
    base_value = result.results[0].answer_logprob_base
    lines = [(f"base: {base}", base_value, BASE_COLOUR, "solid", None)]
    for k, i in enumerate(grouped.references):
        colour = PALETTE[(len(grouped.runs) + k) % len(PALETTE)]
        lines.append((result.models[i], values[i], colour, REFERENCE_DASHES[k % len(REFERENCE_DASHES)], i))
    for label, value, colour, dash, index in lines:
        figure.add_trace(
            go.Scatter(
                x=span, y=[value, value], mode="lines+markers" if index is not None else "lines", name=esc(label),
                line={"color": colour, "dash": dash}, marker={"size": 7, "symbol": "diamond"},
                customdata=[[index, esc(label)]] * 2 if index is not None else None,
                hovertemplate=f"{esc(label)}<br>answer log-prob {value:.3f}<extra></extra>",
            )
        )  # fmt: skip
    figure.update_layout(
        title="Answer log-prob across checkpoints (click a point to contrast that model)",
        xaxis_title="training step", yaxis_title="answer log-prob (sum over its tokens)", height=420,
        legend={"orientation": "h", "y": -0.25}, clickmode="event+select",
    )  # fmt: skip
    return figure


def model_from_selection(figure: go.Figure, points: Sequence[Mapping[str, object]]) -> int | None:
    """The index of the model behind the first selected point that carries one (the base line carries none)."""
    for point in points:
        curve, index = point.get("curve_number"), point.get("point_index", point.get("point_number"))
        if not isinstance(curve, int) or not isinstance(index, int) or not 0 <= curve < len(figure.data):
            continue
        custom = figure.data[curve].customdata
        if custom is not None and 0 <= index < len(custom) and custom[index][0] is not None:
            return int(custom[index][0])
    return None


def ordered_models(runs: Sequence[str | None], steps: Sequence[int | None]) -> list[int]:
    """Model indices as the heatmap lists them: each run's checkpoints in step order, then the single models."""
    grouped = trajectories(runs, steps)
    return [i for points in grouped.runs.values() for _, i in points] + grouped.references


def delta_heatmap(result: MultiProbeResult, runs: Sequence[str | None], steps: Sequence[int | None]) -> go.Figure:
    """Δ log-prob (model − base) of every answer token (columns) under every model (rows), 0 white."""
    order = ordered_models(runs, steps)
    tokens = [t.token for t in result.results[0].tokens]
    z = [[t.delta for t in result.results[i].tokens] for i in order]
    limit = max((abs(v) for row in z for v in row), default=0.0) or 1.0
    names = [esc(result.models[i]) for i in order]
    figure = go.Figure(
        go.Heatmap(
            z=z, x=list(range(len(tokens))), y=list(range(len(order))), colorscale="RdBu", zmid=0,
            zmin=-limit, zmax=limit, colorbar={"title": "Δ log-prob"},
            customdata=[[[name, esc(t)] for t in tokens] for name in names],
            hovertemplate="%{customdata[0]}<br>token %{customdata[1]}<br>Δ %{z:.3f}<extra></extra>",
        )
    )  # fmt: skip
    figure.update_layout(
        title="Per-token Δ log-prob against the base (blue: more likely, red: less)",
        xaxis={**token_axis(tokens), "title_text": "answer token"},
        yaxis={"tickmode": "array", "tickvals": list(range(len(order))), "ticktext": names, "autorange": "reversed"},
        height=max(260, 28 * len(order) + 140),
    )
    return figure


def lens_columns(lens: CheckpointLens, run: str | None) -> list[int]:
    """The models of `run` in step order (None: every model in its order)."""
    if run is None:
        return list(range(len(lens.models)))
    return [i for _, i in trajectories(lens.runs, lens.steps).runs.get(run, [])]


def lens_heatmap(lens: CheckpointLens, run: str | None) -> go.Figure:
    """log10 of the answer's mean rank per layer (rows) and checkpoint of `run` (columns, by step): dark where the
    answer still ranks high. The base is the first column."""
    columns = lens_columns(lens, run)
    if not columns:
        raise UserError(f"no model of run {run!r} in the lens")
    labels = ["base"] + [f"step {lens.steps[i]}" if run else lens.models[i] for i in columns]
    ranks = np.array([lens.base_rank] + [lens.rank[i] for i in columns], dtype=float).T  # [layers, 1 + columns]
    figure = go.Figure(
        go.Heatmap(
            z=np.log10(ranks).tolist(), x=[esc(label) for label in labels], y=lens.layers, colorscale="Viridis_r",
            zmin=0, colorbar={"title": "mean rank", "tickvals": [0, 1, 2, 3, 4], "ticktext": ["1", "10", "100",
            "1k", "10k"]}, customdata=ranks.tolist(),
            hovertemplate="%{x}<br>layer %{y}<br>mean rank %{customdata:.1f}<extra></extra>",
        )
    )  # fmt: skip
    figure.update_layout(
        title=f"Logit lens across checkpoints{f' of {esc(run)}' if run else ''}: the answer's mean rank by layer",
        xaxis_title="checkpoint", yaxis_title="layer (0 = embeddings)", height=420,
    )  # fmt: skip
    return figure


def lens_reading(lens: CheckpointLens, run: str | None) -> str:
    """In words: at which checkpoint the answer leaves the top TOP_RANK at the last layer, and down to which depth it
    still ranks there at that checkpoint. Plain text with the models' labels as they are: escape it for markdown."""
    columns = lens_columns(lens, run)
    final = [lens.rank[i][-1] for i in columns]
    names = [f"step {lens.steps[i]}" if run else lens.models[i] for i in columns]
    start = f"At the last layer the answer's mean rank is {lens.base_rank[-1]:.1f} under the base"
    gone = next((k for k, rank in enumerate(final) if rank > TOP_RANK), None)
    if gone is None:
        return f"{start} and stays within the top {TOP_RANK:.0f} at every checkpoint ({final[-1]:.1f} at the last)."
    deepest = max((layer for layer, rank in zip(lens.layers, lens.rank[columns[gone]], strict=True)
                   if rank <= TOP_RANK), default=None)  # fmt: skip
    where = (
        f"it still ranks in the top {TOP_RANK:.0f} at layer {deepest} of {lens.layers[-1]}"
        if deepest is not None
        else f"it ranks in the top {TOP_RANK:.0f} at no layer"
    )
    return (
        f"{start}; it first leaves the top {TOP_RANK:.0f} at {names[gone]} (mean rank {final[gone]:.1f}), where "
        f"{where}."
    )


def answer_table(result: MultiProbeResult, runs: Sequence[str | None], steps: Sequence[int | None]) -> list[dict]:
    """One row per model: its run, step, answer log-prob, Δ against the base and answer probability."""
    rows = []
    for i, probe in enumerate(result.results):
        rows.append({
            "model": result.models[i], "run": runs[i], "step": steps[i],
            "answer_logprob": probe.answer_logprob_unlearned, "delta": probe.delta,
            "answer_probability": math.exp(probe.answer_logprob_unlearned),
        })  # fmt: skip
    return rows
