"""The sidebar's memory budget for the pair: a size such as 12GB (empty: automatic), passed to
`ModelPair.load(max_memory=...)` (core.models.offload); and the loaded pair's sharing and offloading, in words."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.common.errors import UserError
from core.models.offload import parse_size
from dashboard.plain import plain

BUDGET_KEY = "ulens_max_memory"
BUDGET_HELP = (
    "Memory for the pair's weights on the device (RAM on a CPU), e.g. 12GB or 500MB. Layers beyond it stay offloaded "
    "(CPU RAM behind a GPU, then disk) and are read for each forward pass: the same numbers, slower. Empty: the whole "
    "pair in memory, or a budget chosen automatically when it does not fit."
)


def max_memory_field(container: Any = st) -> int | None:
    """A text field for the budget (inside the pair form, say); returns its bytes, or None when empty. A size that
    cannot be read is shown as an error under the field and treated as empty."""
    text = container.text_input(
        "Memory budget", key=BUDGET_KEY, placeholder="automatic", help=BUDGET_HELP, max_chars=32
    )
    try:
        return parse_size(text)
    except UserError as exc:
        container.caption(f":red[{plain(str(exc))}]")
        return None


def memory_lines(info: dict[str, Any]) -> list[str]:
    """What `ModelPair.describe()` says about tensors shared, the budget and offloaded layers, as escaped lines for
    the loaded-pair panel."""
    lines = []
    if info.get("tensors"):
        lines.append(f"Tensors: {info['tensors']}")
    if info.get("max_memory"):
        how = "automatic budget" if info.get("automatic_budget") else "budget"
        lines.append(f"Memory {how}: {info['max_memory']}")
    if info.get("offloaded"):
        lines.append(f"Offloaded: {info['offloaded']}")
    if info.get("probe_seconds"):
        timed = ", ".join(f"{side} {seconds:.2f} s" for side, seconds in info["probe_seconds"].items())
        lines.append(f"One probe-sized forward pass (32 tokens): {timed}")
    return [plain(line) for line in lines]
