"""Coloured-token HTML for probe results (the dashboard and the HTML report draw the same markup).

Every model- or user-produced string is escaped here, so a prompt like `<img onerror=…>` shows as text.
"""

from __future__ import annotations

import html
import math

from core.analyses.probe import ProbeResult, TokenShift
from core.present.numbers import log_prob, number, probability, signed

VIEWS = {
    "delta": "Δ log-prob (unlearned − base)",
    "base": "log-prob under the base model",
    "unlearned": "log-prob under the unlearned model",
}
NEGATIVE_RGB = (214, 39, 40)  # lost probability: red
POSITIVE_RGB = (31, 119, 180)  # gained probability: blue
_LOW = (94, 60, 153)  # an unlikely token in the log-prob views: purple


def mix(rgb: tuple[int, int, int], strength: float) -> str:
    strength = min(1.0, max(0.0, strength))
    r, g, b = (round(255 + (c - 255) * strength) for c in rgb)
    return f"rgb({r},{g},{b})"


def token_colour(token: TokenShift, view: str, scale: float) -> str:
    """Diverging colour for Δ (red = lost, blue = gained); sequential for a log-prob (darker = less likely)."""
    if view == "delta":
        return mix(NEGATIVE_RGB if token.delta < 0 else POSITIVE_RGB, abs(token.delta) / scale)
    logprob = token.logprob_base if view == "base" else token.logprob_unlearned
    return mix(_LOW, -logprob / scale)


def default_scale(result: ProbeResult, view: str) -> float:
    """The colour scale's end: the largest |value| shown, at least 1 nat so tiny noise stays pale."""
    values = [
        abs(t.delta) if view == "delta" else -(t.logprob_base if view == "base" else t.logprob_unlearned)
        for t in result.tokens
    ]
    return max([1.0, *values])


def _tooltip(token: TokenShift) -> str:
    top_b = ", ".join(f"{text!r} {probability(p)}" for text, p in token.topk_base)
    top_u = ", ".join(f"{text!r} {probability(p)}" for text, p in token.topk_unlearned)
    return (
        f"{token.token!r}  Δ {signed(token.delta)}\n"
        f"base: log p {log_prob(token.logprob_base, 3)} (p {probability(math.exp(token.logprob_base))}), "
        f"rank {token.rank_base}, entropy {number(token.entropy_base)}\n"
        f"unlearned: log p {log_prob(token.logprob_unlearned, 3)} "
        f"(p {probability(math.exp(token.logprob_unlearned))}), "
        f"rank {token.rank_unlearned}, entropy {number(token.entropy_unlearned)}\n"
        f"KL(base‖unlearned) {number(token.kl)}\n"
        f"top base: {top_b}\ntop unlearned: {top_u}"
    )


def token_html(result: ProbeResult, view: str = "delta", scale: float | None = None, show_context: bool = True) -> str:
    """The scored tokens as coloured spans (hover for details), after the unscored context in grey."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    scale = scale or default_scale(result, view)
    parts = ['<div class="ulens-tokens" style="font-family:monospace;white-space:pre-wrap;line-height:1.9">']
    if show_context and result.context_tokens:
        context = html.escape("".join(result.context_tokens))
        parts.append(f'<span class="ulens-context" style="color:#888">{context}</span>')
    for token in result.tokens:
        parts.append(
            f'<span class="ulens-token" data-delta="{token.delta:.6f}" data-position="{token.position}" '
            f'title="{html.escape(_tooltip(token), quote=True)}" '
            f'style="background:{token_colour(token, view, scale)};border-radius:3px;padding:1px 0">'
            f"{html.escape(token.token)}</span>"
        )
    parts.append("</div>")
    return "".join(parts)


def legend_html(view: str, scale: float) -> str:
    """A small colour bar that says what the colours mean."""
    if view == "delta":
        stops = f"{mix(NEGATIVE_RGB, 1)}, #fff, {mix(POSITIVE_RGB, 1)}"
        left, right = f"−{scale:.1f} (unlearned lost it)", f"+{scale:.1f} (unlearned gained it)"
    else:
        stops = f"#fff, {mix(_LOW, 1)}"
        left, right = "0 (certain)", f"−{scale:.1f} (unlikely)"
    return (
        '<div class="ulens-legend" style="display:flex;align-items:center;gap:8px;font-size:0.8em">'
        f"<span>{html.escape(left)}</span>"
        f'<span style="display:inline-block;width:180px;height:10px;background:linear-gradient(90deg,{stops})">'
        f"</span><span>{html.escape(right)}</span>"
        f"<span style='color:#666'>{html.escape(VIEWS[view])}</span></div>"
    )
