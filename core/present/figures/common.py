"""What every figure module shares: the palette and escaping of data strings, tokens as tick labels.

Plotly renders titles, legend names, axis titles, tick labels and hover templates as HTML, so every string that
comes from data (model, method, metric names, tokens) is passed through `html.escape` before it goes into a figure.
Tokens sit on numeric axes (position 0, 1, …) with escaped tick labels, so a repeated token keeps its own cell and
the prompt's order, and a token such as `<script>` shows as text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from plotly.colors import qualitative

PALETTE = qualitative.Plotly
_VISIBLE = str.maketrans({"\n": "↵", "\t": "→", "\r": "␍"})


def esc(text: Any) -> str:
    """Data string made safe for plotly's HTML rendering."""
    return html.escape(str(text))


def token_label(text: str) -> str:
    """A token as an escaped, visible tick label (newline and tab shown as symbols, the empty string as ∅)."""
    return esc(text.translate(_VISIBLE)) if text else "∅"


def token_axis(tokens: Sequence[str]) -> dict:
    """Numeric positions with the tokens as tick labels: duplicates stay apart and in order."""
    return {"tickmode": "array", "tickvals": list(range(len(tokens))), "ticktext": [token_label(t) for t in tokens]}
