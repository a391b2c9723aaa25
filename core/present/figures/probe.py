"""Figures of the Probe page: the per-token shift of a probed answer, its token table with readable numbers, and
the one-line reading of a forget example next to a retain example."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from core.analyses.probe import ProbeResult
from core.present import numbers
from core.present.figures.common import esc
from core.present.highlight import NEGATIVE_RGB, POSITIVE_RGB, mix

UNTOUCHED_SHARE = 0.1  # a retain shift under this share of the forget shift reads as "almost untouched"


def token_shift_figure(result: ProbeResult) -> go.Figure:
    """Per-token Δ log-prob as bars (hover: both log-probs, probabilities and ranks), red below zero."""
    labels = [f"{i}:{t.token}" for i, t in enumerate(result.tokens)]
    colours = [mix(NEGATIVE_RGB if t.delta < 0 else POSITIVE_RGB, 0.85) for t in result.tokens]
    hover = [
        esc(
            f"{t.token!r}: Δ {numbers.signed(t.delta)} · "
            f"base log p {numbers.log_prob(t.logprob_base)} (p {numbers.probability(math.exp(t.logprob_base))}, "
            f"rank {t.rank_base}) · unlearned log p {numbers.log_prob(t.logprob_unlearned)} "
            f"(p {numbers.probability(math.exp(t.logprob_unlearned))}, rank {t.rank_unlearned}) · "
            f"KL {numbers.number(t.kl)}"
        )
        for t in result.tokens
    ]
    figure = go.Figure(
        go.Bar(x=labels, y=[t.delta for t in result.tokens], marker_color=colours, hovertext=hover, hoverinfo="text")
    )
    figure.update_layout(
        height=280,
        margin={"l": 40, "r": 10, "t": 30, "b": 40},
        yaxis_title="Δ log-prob",
        title="Per-token shift (unlearned − base)",
    )
    figure.update_yaxes(tickformat=numbers.HOVER_NUMBER)
    figure.update_xaxes(tickvals=labels, ticktext=[esc(t.token) for t in result.tokens])
    return figure


def _top_k(candidates: list[tuple[str, float]]) -> str:
    return ", ".join(f"{text!r} {numbers.probability(p)}" for text, p in candidates)


def token_table(result: ProbeResult) -> pd.DataFrame:
    """One row per scored token: log-probs, probabilities, Δ, ranks, entropies, KL and the top-k candidates with
    their probabilities written as core.present.numbers writes them (the numeric columns stay numbers, for sorting
    and the CSV; the page formats them)."""
    rows = [
        {
            "position": t.position,
            "token": t.token,
            "logprob_base": t.logprob_base,
            "logprob_unlearned": t.logprob_unlearned,
            "delta": t.delta,
            "prob_base": math.exp(t.logprob_base),
            "prob_unlearned": math.exp(t.logprob_unlearned),
            "rank_base": t.rank_base,
            "rank_unlearned": t.rank_unlearned,
            "entropy_base": t.entropy_base,
            "entropy_unlearned": t.entropy_unlearned,
            "kl": t.kl,
            "topk_base": _top_k(t.topk_base),
            "topk_unlearned": _top_k(t.topk_unlearned),
        }
        for t in result.tokens
    ]
    return pd.DataFrame(rows)


def comparison_reading(forget: ProbeResult, retain: ProbeResult, base: str, unlearned: str) -> str:
    """One sentence computed from the two results: how far `unlearned` moved from `base` on the forget answer (in
    nats, summed over its tokens), and whether the retain answer next to it moved with it. `base` and
    `unlearned` are the models' names as the person typed them (plain text: escape before markdown)."""
    shift = forget.delta
    if shift < 0:
        first = f"{unlearned} lost {numbers.nats(shift)} on this forget answer compared with {base}"
    elif shift > 0:
        first = f"{unlearned} gained {numbers.nats(shift)} on this forget answer compared with {base}"
    else:
        first = f"{unlearned} and {base} give this forget answer the same log-probability"
    moved = retain.delta
    if abs(moved) <= UNTOUCHED_SHARE * abs(shift):
        second = f"the retain example next to it is almost untouched ({numbers.signed(moved)} nats)"
    else:
        second = f"the retain example next to it moved too ({numbers.signed(moved)} nats)"
    return f"{first}; {second}."
