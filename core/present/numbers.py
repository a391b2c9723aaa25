"""Numbers a person can read, in every table, hover, caption and report: one place that says how a probability, a
log-probability, a difference or a count is written.

A probability spans thirty orders of magnitude in this tool (the unlearned model gives a forgotten answer 1e-25), so
fixed decimals print either 0.0000 or 0.0000000000000000000000008. Here a value keeps `significant` significant
digits and switches to scientific notation below 1e-3 (and at a million and above), with the exponent's zero
padding removed: `probability(8e-25)` is "8.00e-25", `probability(0.5)` is "0.500", `number(-41.237)` is "-41.2".

The same choices for the two renderers that format on their own:
- `TABLE_*`: printf formats for `st.column_config.NumberColumn(format=…)` (the browser formats with sprintf-js,
  whose `%g` keeps the digits and switches to an exponent for tiny values: 8e-25 shows as "8e-25", 0.5 as "0.5").
- `HOVER_*`: d3-format specifiers for Plotly hover templates and axes ("%{y:.3~g}"): `~` drops trailing zeros, `g`
  switches to an exponent below 1e-6.
"""

from __future__ import annotations

import math
from numbers import Real

SIGNIFICANT = 3
SMALL = 1e-3  # below this (in absolute value) a number is written in scientific notation
LARGE = 1e6  # at and above this too
MISSING = "–"  # NaN, None: shown as a dash, not "nan"

TABLE_PROBABILITY = "%.3g"
TABLE_NUMBER = "%.4g"
TABLE_SIGNED = "%+.3f"
HOVER_PROBABILITY = ".3~g"
HOVER_NUMBER = ".4~g"
HOVER_SIGNED = "+.3f"


def _missing(value: object) -> bool:
    return value is None or not isinstance(value, Real) or math.isnan(value)


def _scientific(value: float, significant: int) -> str:
    """8.00e-25 (not 8.00e-025 or 8e-25: the digits say how precise the value is)."""
    mantissa, exponent = f"{value:.{significant - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def number(value: float | None, significant: int = SIGNIFICANT, sign: bool = False) -> str:
    """`value` with `significant` significant digits: fixed notation from 1e-3 to 1e6 (thousands separated),
    scientific outside; "0" for zero, "–" for NaN or None, "∞"/"-∞" for infinities. `sign`: a leading "+" on
    positive values (a difference)."""
    if _missing(value):
        return MISSING
    value = float(value)
    plus = "+" if sign and value > 0 else ""
    if math.isinf(value):
        return f"{plus}∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < SMALL or magnitude >= LARGE:
        return plus + _scientific(value, significant)
    decimals = max(0, significant - 1 - math.floor(math.log10(magnitude)))
    return plus + f"{value:,.{decimals}f}"


def signed(value: float | None, significant: int = SIGNIFICANT) -> str:
    """A difference: `number` with a "+" on positive values ("+1.25", "-41.2", "0")."""
    return number(value, significant, sign=True)


def probability(value: float | None, significant: int = SIGNIFICANT) -> str:
    """A probability in [0, 1]: "0.500", "0.0123", "8.00e-25"; exactly 1 is "1", exactly 0 is "0"."""
    if not _missing(value) and float(value) == 1.0:
        return "1"
    return number(value, significant)


def log_prob(value: float | None, decimals: int = 2) -> str:
    """A log-probability in nats with fixed decimals ("-0.05", "-41.24"): these are added and compared, so the
    decimal point stays in place; scientific only when beyond a million."""
    if _missing(value):
        return MISSING
    if math.isinf(float(value)) or abs(float(value)) >= LARGE:
        return number(value)
    return f"{float(value):.{decimals}f}"


def nats(value: float, decimals: int = 1) -> str:
    """An amount of log-probability in words: "40.2 nats", "1 nat"."""
    text = f"{abs(float(value)):.{decimals}f}".rstrip("0").rstrip(".")
    return f"{text} nat" if text == "1" else f"{text} nats"


def percent(value: float | None, decimals: int = 0) -> str:
    """A fraction as a percentage: 0.25 → "25%"; "–" for NaN."""
    if _missing(value):
        return MISSING
    return f"{float(value) * 100:.{decimals}f}%"


def count(value: int) -> str:
    """A whole number with thousands separated: "1,234,567"."""
    return f"{int(value):,}"


def parameters(value: int) -> str:
    """A parameter count as people say it: "135M", "1.7B", "2.3K", "950"."""
    value = int(value)
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= size:
            scaled = value / size
            return f"{scaled:.{1 if scaled < 10 else 0}f}".rstrip("0").rstrip(".") + unit
    return str(value)


def byte_size(value: float) -> str:
    """Bytes in binary units: "512 B", "1.5 KiB", "270 MiB", "2.1 GiB"."""
    value = float(value)
    for size, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= size:
            scaled = value / size
            return f"{scaled:.{1 if scaled < 10 else 0}f} {unit}"
    return f"{value:.0f} B"
