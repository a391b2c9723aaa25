"""How to attribute: AttributionSettings (each method declares the options it reads) and the baselines that replace a
prompt token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.common import Option, option, options_of
from core.common.errors import UserError
from core.common.limits import MAX_IG_STEPS, MAX_SHAPLEY_SAMPLES

GRANULARITIES = ("token", "word")
# Tokens (× answer rows for IG) per batch of steps or perturbations, by device type. On CPU, IG's batched backward
# slows down once its working set outgrows the caches (measured: ~8 steps × 31 tokens × 7 rows is the sweet spot).
BATCH_TOKENS = {"cpu": 2048}
# captum's integration rules (captum.attr._utils.approximation_methods) and the baselines of BASELINES below
IG_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BASELINE_NAMES = ("pad", "eos", "unk", "neutral", "zero")
LRP_RULE_NAMES = ("attnlrp", "cp")  # core.analyses.attribution.lrp_rules.LRP_RULES
DEFAULT_BATCH_TOKENS = 32768


@dataclass(frozen=True)
class AttributionSettings:
    """How to attribute: target rows, baseline, granularity and each method's own knobs."""

    per_token: bool = False  # one row per answer token (or word) instead of the whole answer's log-prob
    # The methods' own knobs are typed options (core.common.option): each method declares the ones it reads.
    baseline: str = option(
        "pad", "What replaces a prompt token: the start of the integration path, or the ablated value.",
        choices=BASELINE_NAMES, label="Baseline",
    )  # fmt: skip
    granularity: str = "token"  # "token" or "word" (sub-word tokens summed, or ablated together, per word)
    n_steps: int = option(
        32, "Quadrature points; more steps, smaller convergence delta.", min=1, max=MAX_IG_STEPS, label="IG steps"
    )
    method: str = option(
        "gausslegendre", "captum's quadrature rule for integrated gradients.", choices=IG_RULES, label="IG rule"
    )
    n_samples: int = option(
        16, "Random feature orders Shapley sampling averages over.", min=1, max=MAX_SHAPLEY_SAMPLES,
        label="Shapley samples",
    )  # fmt: skip
    window: int = option(3, "Prompt tokens or words hidden together (clipped to the prompt).", min=1, label="Window")
    lrp_rule: str = option(
        "attnlrp", "AttnLRP's softmax rule (keeps part of the relevance by design), or CP-LRP's (attention weights "
        "held constant: conserves exactly).",
        choices=LRP_RULE_NAMES, label="LRP rule",
    )  # fmt: skip
    include_answer_prefix: bool = False  # also attribute to the answer's own earlier tokens (inseq's view)
    keep_special: bool = True  # special tokens (BOS, chat markers) are fed as they are, never attributed
    seed: int = option(0, "Seeds the random feature orders (the same seed, the same map).", min=0, label="Seed")
    batch_tokens: int | None = None  # None: BATCH_TOKENS for the device, else DEFAULT_BATCH_TOKENS


def _token_baseline(attr: str) -> Callable[[Any], int]:
    def pick(tokenizer: Any) -> int:
        token_id = getattr(tokenizer, attr, None)
        if token_id is None:
            raise UserError(f"this tokenizer has no {attr.removesuffix('_token_id')} token; choose another baseline")
        return int(token_id)

    return pick


def _neutral_token(tokenizer: Any) -> int:
    ids = tokenizer(" ", add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise UserError("this tokenizer has no single-token space for the neutral baseline; choose another")
    return int(ids[0])


# A baseline replaces a prompt token's embedding: by a token's embedding, or (None) by the zero vector.
BASELINES: dict[str, Callable[[Any], int | None]] = {
    "pad": _token_baseline("pad_token_id"),
    "eos": _token_baseline("eos_token_id"),
    "unk": _token_baseline("unk_token_id"),
    "neutral": _neutral_token,
    "zero": lambda tokenizer: None,
}


# The baseline a page starts from: the space token, the most faithful for feature ablation (the default method) on
# the demo pair's forget and retain examples by the area between its deletion and insertion curves less a random
# order's (docs/CAUSAL.md, "The default baseline"); pad where the tokenizer has no single-token space.
DEFAULT_BASELINE, FALLBACK_BASELINE = "neutral", "pad"


def default_baseline(tokenizer: Any) -> str:
    """DEFAULT_BASELINE where this tokenizer has it, else FALLBACK_BASELINE."""
    try:
        BASELINES[DEFAULT_BASELINE](tokenizer)
    except UserError:
        return FALLBACK_BASELINE
    return DEFAULT_BASELINE


def settings_options(*names: str) -> tuple[Option, ...]:
    """The AttributionSettings fields a method reads, as its declared options (one place for defaults and bounds)."""
    return options_of(AttributionSettings, *names)


SETTINGS_OPTIONS = {spec.name: spec for spec in options_of(AttributionSettings)}  # every method's, by name
