"""Figures of the Robustness page: recovery % per attack and the relearning curve."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from core.attacks.runner import RobustnessResult
from core.common.errors import UserError
from core.present.figures.common import esc


def recovery_figure(result: RobustnessResult) -> go.Figure:
    """One bar per attack: recovery % of the forget probability (bars missing where nothing could be measured,
    with the reason in the hover), 0 % = the unlearned model, 100 % = the base."""
    rows = result.headlines()
    labels = [esc(o.attack) for o in rows]
    values = [o.recovery_pct for o in rows]
    hover = [
        esc(o.reason) if o.recovery_pct is None else
        f"{esc(o.variant)}: {o.attacked_unlearned:.4f} attacked vs {o.reference_unlearned:.4f} unlearned, "
        f"{o.reference_base:.4f} base ({o.n_items} items)"
        for o in rows
    ]  # fmt: skip
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=values,
            text=["n/a" if v is None else f"{v:.1f}%" for v in values],
            textposition="outside",
            customdata=hover,
            hovertemplate="%{x}<br>%{customdata}<extra></extra>",
            marker_color=["#bbbbbb" if v is None else "#d62728" if v >= 50 else "#1f77b4" for v in values],
            name="recovery %",
        )
    )
    figure.add_hline(y=100, line_dash="dot", line_color="#7f7f7f", annotation_text="base")
    figure.add_hline(y=0, line_color="#222222")
    figure.update_layout(
        title="Recovery of forgotten answers by attack",
        yaxis_title="recovery % (0 = unlearned, 100 = base)",
        xaxis_title="attack",
        showlegend=False,
        margin={"t": 60},
    )
    return figure


def relearning_figure(result: RobustnessResult) -> go.Figure:
    """Forget probability of the held-out forget items against relearning steps, with the clean base and unlearned
    levels on the same items."""
    curve = result.relearning()
    if not curve:
        raise UserError("this result has no relearning curve (run the relearn attack)")
    steps = [o.step for o in curve]
    figure = go.Figure(
        go.Scatter(
            x=steps,
            y=[o.attacked_unlearned for o in curve],
            mode="lines+markers",
            name="relearned unlearned model",
            customdata=[o.recovery_pct for o in curve],
            hovertemplate="step %{x}: p = %{y:.4f}<br>recovery %{customdata:.1f}%<extra></extra>",
        )
    )
    figure.add_hline(y=curve[0].reference_base, line_dash="dash", line_color="#222222", annotation_text="base")
    figure.add_hline(y=curve[0].reference_unlearned, line_dash="dot", line_color="#7f7f7f", annotation_text="unlearned")
    figure.update_layout(
        title=f"Relearning: forget probability of the {curve[0].n_items} held-out forget items",
        xaxis_title="LoRA fine-tuning steps on the other forget items",
        yaxis_title="forget probability",
    )
    return figure


ROBUSTNESS_COLUMNS = {
    "attack": "attack",
    "variant": "variant",
    "n_items": "forget items",
    "recovery_pct": "recovery (%, 0 = stays forgotten, 100 = back to the base)",
    "attacked_unlearned": "forget probability, unlearned under attack",
    "reference_unlearned": "forget probability, unlearned",
    "reference_base": "forget probability, base",
    "reason": "why not measured",
}


def attack_description(name: str) -> str:
    """What an attack does, in words (its registered description; empty for an attack not registered here)."""
    from core.attacks import ATTACKS

    return ATTACKS[name].description if name in ATTACKS else ""


def robustness_frame(result: RobustnessResult) -> pd.DataFrame:
    """One row per attack (its headline outcome) with the columns a reader needs, named in words, and what each
    attack does."""
    rows = [{key: getattr(o, key) for key in ROBUSTNESS_COLUMNS} for o in result.headlines()]
    frame = pd.DataFrame(rows, columns=list(ROBUSTNESS_COLUMNS))
    frame.insert(1, "what it does", [attack_description(o.attack) for o in result.headlines()])
    return frame.rename(columns=ROBUSTNESS_COLUMNS)
