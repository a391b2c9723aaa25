"""Figures of the Probe page: the per-token shift of a probed answer."""

from __future__ import annotations

import plotly.graph_objects as go

from core.analyses.probe import ProbeResult
from core.present.figures.common import esc
from core.present.highlight import NEGATIVE_RGB, POSITIVE_RGB, mix


def token_shift_figure(result: ProbeResult) -> go.Figure:
    """Per-token Δ log-prob as bars (hover: both log-probs and ranks), red below zero."""
    labels = [f"{i}:{t.token}" for i, t in enumerate(result.tokens)]
    colours = [mix(NEGATIVE_RGB if t.delta < 0 else POSITIVE_RGB, 0.85) for t in result.tokens]
    hover = [
        esc(
            f"{t.token!r}: base {t.logprob_base:.3f} (rank {t.rank_base}), "
            f"unlearned {t.logprob_unlearned:.3f} (rank {t.rank_unlearned}), KL {t.kl:.3f}"
        )
        for t in result.tokens
    ]
    figure = go.Figure(
        go.Bar(x=labels, y=[t.delta for t in result.tokens], marker_color=colours, hovertext=hover, hoverinfo="text")
    )
    figure.update_layout(
        height=300,
        margin={"l": 40, "r": 10, "t": 30, "b": 40},
        yaxis_title="Δ log-prob",
        title="Per-token shift (unlearned − base)",
    )
    figure.update_xaxes(tickvals=labels, ticktext=[esc(t.token) for t in result.tokens])
    return figure
