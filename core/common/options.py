"""Typed options: what a registered entry (a method, an attack) lets a caller set, with its type, default and bounds.

An option is declared once, as a dataclass field carrying its description in `metadata` (`option(...)` below, the
style core/unlearn/methods.py started with `help` and `choices`), and read back as `Option` rows by `options_of`.
The dashboard draws one widget per option, the CLI lists them and `Option.validate` refuses a value outside its
range or choices, so none of them keeps its own copy of the bounds.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from core.common.errors import UserError

OPTION_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """One setting: its name, type, default, allowed range (min/max) or choices, and a line of help.

    `label` is how a user interface names it (the name, spaced, when not given)."""

    name: str
    type: type
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise TypeError(f"option {self.name}: type must be one of bool, int, float, str, not {self.type!r}")

    @property
    def title(self) -> str:
        """The label a form shows: `label`, else the name with spaces."""
        return self.label or self.name.replace("_", " ").capitalize()

    @property
    def range(self) -> str:
        """The allowed values in words: "a | b", "1..100", "≥ 1", or "" when any value of the type goes."""
        if self.choices:
            return " | ".join(map(str, self.choices))
        low = "" if self.min is None else f"{self.min:g}"
        high = "" if self.max is None else f"{self.max:g}"
        if low and high:
            return f"{low}..{high}"
        return f"≥ {low}" if low else (f"≤ {high}" if high else "")

    def validate(self, value: Any, owner: str = "") -> Any:
        """`value` if it has the option's type and lies in its range or choices, else a UserError naming both."""
        what = f"{owner} option {self.name}" if owner else f"option {self.name}"
        value = self._typed(value, what)
        if self.choices and value not in self.choices:
            raise UserError(f"{what} must be one of {', '.join(map(str, self.choices))}, not {value!r}")
        if self.type in (int, float):
            low = -math.inf if self.min is None else self.min
            high = math.inf if self.max is None else self.max
            if not low <= value <= high:  # also refuses NaN
                raise UserError(f"{what} must be {self._bounds()}, not {value!r}")
        return value

    def _bounds(self) -> str:
        """The range in words for a message: "at least 1 and at most 1,000"."""
        parts = [
            f"at least {self.min:,g}" if self.min is not None else "",
            f"at most {self.max:,g}" if self.max is not None else "",
        ]
        return " and ".join(part for part in parts if part)

    def _typed(self, value: Any, what: str) -> Any:
        """The value as the option's type: an int passes as a float, nothing else is converted (a bool is no int)."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) != (self.type is bool) or not isinstance(value, self.type):
            raise UserError(f"{what} must be a {self.type.__name__}, not {value!r}")
        return value


def option(
    default: Any,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    label: str = "",
) -> Any:
    """A dataclass field whose metadata describes it as an option (read back by `options_of`)."""
    metadata = {"help": help, "min": min, "max": max, "choices": choices, "label": label}
    return dataclasses.field(default=default, metadata={k: v for k, v in metadata.items() if v not in (None, "")})


def options_of(cls: type, *names: str) -> tuple[Option, ...]:
    """The options a dataclass declares, typed by their annotations: `names` in that order, else every field that
    carries option metadata (a plain field, such as an internal batch size, is no option)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    chosen = names or [name for name, f in fields.items() if f.metadata]
    return tuple(_option(fields[name], hints[name]) for name in chosen)


def _option(field: dataclasses.Field, hint: Any) -> Option:
    meta = field.metadata
    choices = meta.get("choices")
    return Option(
        name=field.name,
        type=hint,
        default=field.default,
        help=meta.get("help", ""),
        min=meta.get("min"),
        max=meta.get("max"),
        choices=tuple(choices) if choices is not None else None,
        label=meta.get("label", ""),
    )


def validate_options(options: tuple[Option, ...], values: Any, owner: str = "") -> None:
    """Check each declared option's value on `values` (a settings object with one attribute per option)."""
    for declared in options:
        declared.validate(getattr(values, declared.name), owner)
