"""core.present.numbers: hand-worked examples of each rule (significant digits, the switch to scientific notation,
signs, missing values), and the same rules through the two renderers' own formatters where Python has one."""

from __future__ import annotations

import math

import pytest

from core.present import numbers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8e-25, "8.00e-25"),  # the logit-lens probability that printed as 0.0000000000000000000000008
        (0.5, "0.500"),
        (0.012345, "0.0123"),
        (0.001, "0.00100"),  # the switch is strictly below 1e-3
        (0.000999, "9.99e-4"),
        (1.0, "1"),
        (0.0, "0"),
        (float("nan"), "–"),
        (None, "–"),
    ],
)
def test_probability(value, expected) -> None:
    assert numbers.probability(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-41.237, "-41.2"),
        (123.456, "123"),
        (1234.5, "1,234"),  # round half to even on the binary value 1234.5
        (999_999.0, "999,999"),
        (1_000_000.0, "1.00e6"),
        (-2.5e-7, "-2.50e-7"),
        (float("inf"), "∞"),
        (float("-inf"), "-∞"),
    ],
)
def test_number(value, expected) -> None:
    assert numbers.number(value) == expected


def test_signed_marks_positive_differences_only() -> None:
    assert [numbers.signed(v) for v in (1.25, -41.24, 0.0)] == ["+1.25", "-41.2", "0"]


def test_number_keeps_the_significant_digits_asked_for() -> None:
    for value in (3.14159e-30, 2.71828e-5, 0.0271828, 2.71828, 271.828, 2718.28):
        text = numbers.number(value, significant=4)
        digits = text.split("e")[0].replace(",", "").replace(".", "").lstrip("-0")
        assert len(digits) >= 4, text
        assert math.isclose(float(text.replace(",", "")), value, rel_tol=5e-4), text  # half a unit in the 4th digit


def test_log_prob_nats_percent_count_parameters_bytes() -> None:
    assert numbers.log_prob(-41.2371) == "-41.24" and numbers.log_prob(float("nan")) == "–"
    assert numbers.nats(-40.24) == "40.2 nats" and numbers.nats(1.04) == "1 nat"
    assert numbers.percent(0.254) == "25%" and numbers.percent(0.254, 1) == "25.4%"
    assert numbers.count(1234567) == "1,234,567"
    assert [numbers.parameters(n) for n in (950, 2_300, 134_515_008, 1_711_376_384)] == ["950", "2.3K", "135M", "1.7B"]
    assert [numbers.byte_size(n) for n in (512, 1536, 270 * 2**20, 2.1 * 2**30)] == [
        "512 B", "1.5 KiB", "270 MiB", "2.1 GiB"
    ]  # fmt: skip


def test_table_formats_are_printf_formats_python_agrees_with() -> None:
    """The browser formats tables with sprintf-js; Python's % operator reads the same format the same way for the
    fixed-point cases, and %g keeps three significant digits of a tiny probability instead of printing zeros."""
    assert numbers.TABLE_PROBABILITY % 8.123e-25 == "8.12e-25"
    assert numbers.TABLE_PROBABILITY % 0.51234 == "0.512"
    assert numbers.TABLE_SIGNED % -41.2371 == "-41.237"


def test_hover_formats_are_d3_specifiers() -> None:
    """d3-format's grammar: [sign][width][,][.precision][~][type]; Python's format mini-language reads the same
    specifier (without the `~`, which only trims trailing zeros) the same way."""
    for spec, value, expected in (
        (numbers.HOVER_PROBABILITY, 8.123e-25, "8.12e-25"),
        (numbers.HOVER_NUMBER, -41.2371, "-41.24"),
        (numbers.HOVER_SIGNED, 1.5, "+1.500"),
    ):
        assert format(value, spec.replace("~", "")) == expected
