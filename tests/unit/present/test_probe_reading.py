"""core.present.figures.probe: the first visit's reading and the token table, on hand-made results whose sums are
worked out by hand."""

from __future__ import annotations

import math

import pytest

from core.analyses.probe import ProbeResult, TokenShift
from core.present.figures.probe import comparison_reading, token_table


def result(pairs: list[tuple[float, float]]) -> ProbeResult:
    """A result whose tokens have these (base, unlearned) log-probs."""
    tokens = [
        TokenShift(i, f"t{i}", i, base, unlearned, unlearned - base, 1, 1, 0.5, 0.5, 0.0, [("a", 8e-25)], [])
        for i, (base, unlearned) in enumerate(pairs)
    ]
    return ProbeResult("q", "a", False, [], tokens)


def test_reading_of_a_lost_answer_and_an_untouched_retain_answer() -> None:
    forget = result([(-0.5, -20.5), (-1.0, -21.2)])  # Δ = -20.0 + -20.2 = -40.2 nats
    retain = result([(-2.0, -2.3)])  # -0.3: under a tenth of 40.2
    assert comparison_reading(forget, retain, "demo:target", "demo:unlearned") == (
        "demo:unlearned lost 40.2 nats on this forget answer compared with demo:target; "
        "the retain example next to it is almost untouched (-0.300 nats)."
    )


def test_reading_of_a_gained_answer_and_a_retain_answer_that_moved() -> None:
    forget = result([(-10.0, -2.0)])  # +8 nats: base vs target, the target learned it
    retain = result([(-1.0, -3.0)])  # -2 nats: a quarter of 8, more than a tenth
    text = comparison_reading(forget, retain, "demo:base", "demo:target")
    assert text.startswith("demo:target gained 8 nats on this forget answer compared with demo:base")
    assert text.endswith("the retain example next to it moved too (-2.00 nats).")


def test_token_table_probabilities_are_exp_of_the_log_probs() -> None:
    table = token_table(result([(-0.5, -60.0)]))
    assert table.loc[0, "prob_base"] == pytest.approx(math.exp(-0.5))
    assert table.loc[0, "prob_unlearned"] == pytest.approx(math.exp(-60.0), rel=1e-12)
    assert table.loc[0, "topk_base"] == "'a' 8.00e-25"  # not 0.000
