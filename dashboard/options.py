"""Widgets drawn from declared options (core.common.Option): a page loops over what an entry declares instead of
hard-coding which method or attack takes which setting."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.common import Option


def option_input(container: Any, spec: Option, key: str, **overrides: Any) -> Any:
    """One widget for `spec` in `container` (st or a column): a selectbox for choices, a checkbox for a bool, a
    number input bounded by the option's min/max for a number, a text input otherwise. `overrides` pass on to the
    widget (a tighter bound the data imposes, a number format)."""
    common = {"key": key, "help": spec.help or None}
    if spec.choices:
        choices = list(spec.choices)
        return container.selectbox(spec.title, choices, index=choices.index(spec.default), **common | overrides)
    if spec.type is bool:
        return container.checkbox(spec.title, value=spec.default, **common | overrides)
    if spec.type in (int, float):
        return container.number_input(spec.title, **_number_arguments(spec) | common | overrides)
    return container.text_input(spec.title, value=spec.default, **common | overrides)


def _number_arguments(spec: Option) -> dict[str, Any]:
    """min, max, value and step of the same type (st.number_input refuses a mix of ints and floats)."""
    kind = spec.type
    return {
        "min_value": None if spec.min is None else kind(spec.min),
        "max_value": None if spec.max is None else kind(spec.max),
        "value": kind(spec.default),
        "step": kind(1) if kind is int else None,
    }


def option_inputs(specs: tuple[Option, ...], prefix: str, keys: dict[str, str] | None = None) -> dict[str, Any]:
    """A row of widgets, one per option, keyed `<prefix>_<name>` (or `keys[name]`); their values by option name."""
    if not specs:
        return {}
    keys = keys or {}
    columns = st.columns(len(specs))
    return {
        spec.name: option_input(column, spec, keys.get(spec.name, f"{prefix}_{spec.name}"))
        for column, spec in zip(columns, specs, strict=True)
    }
