"""What every attack shares: the settings, the context an attack runs in, its outcome, recovery %, and ATTACKS.

Each attack scores the forget answers under an attacked unlearned model — a rewritten prompt, a quantised copy,
a copy fine-tuned on a few forget items, a reading of its intermediate layers — and reports

    recovery % = (p_attacked − p_unlearned) / (p_base − p_unlearned) × 100

on the same items, with p the forget-answer probability (TOFU's "probability": the mean over items of the
geometric mean of the scored tokens' probabilities, teacher-forced, one forward pass per batch). The scored tokens
are the evaluation's (`encode_row` → `core.scoring.encoding.scored_row`): under a chat or tag template the answer,
the template's end-of-turn tokens and the EOS, as open-unlearning scores them; in the plain demo format the answer.
Where base and unlearned differ by less than ε there is nothing to recover and recovery is None with the reason.
Prompt and quantisation attacks are also applied to the base, to tell an attack that helps any model from one that
undoes unlearning. The pair is never modified: weight attacks work on merged copies (core.attacks.copies).

An attack is one class deriving from `Attack`, decorated with `@register`, in any module of this package: ATTACKS
imports every module of core/attacks/ on its first read (`attack_modules`), so a new file is found without being
named anywhere, and whoever reads ATTACKS gets every attack whatever was imported before. The package's __init__
makes that first read, so attacks are listed (and run by default) in attack_modules() order whichever module was
imported first.
"""

from __future__ import annotations

import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from core.common import Option, Registry
from core.common.errors import UserError
from core.common.limits import MAX_BATCH_SIZE, MAX_RELEARN_POINTS, MAX_RELEARN_STEP, check_range
from core.data.qa import QAItem
from core.evaluation import metrics
from core.models.pair import ModelPair
from core.scoring.encoding import Encoded, collate, scored_row
from core.scoring.forward import selected_logits
from core.scoring.statistics import token_statistics

METRIC = "forget_probability"
DEFAULT_EPSILON = 1e-3
NOTHING_FORGOTTEN = "nothing was forgotten to recover"
ALL_VARIANTS = "all"
# Modules of this package that register no attack (helpers and the runner); every other one is an attack module.
NOT_ATTACK_MODULES = ("base", "copies", "runner")
# The attack modules first imported, in this order: the order attacks are listed and run in. Others follow by name.
FIRST_ATTACK_MODULES = ("prompts", "quantize", "relearn", "lens")


# ---------------------------------------------------------------------------------------------- settings


def _parse_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    """`"1,2,4"` or a sequence → sorted distinct steps from 1 to MAX_RELEARN_STEP, at most MAX_RELEARN_POINTS."""
    if isinstance(text, str) and len(text) > 20 * MAX_RELEARN_POINTS:  # refused before it is split
        raise UserError(f"relearning steps: at most {MAX_RELEARN_POINTS} numbers separated by commas")
    try:
        values = [int(part) for part in text.split(",") if part.strip()] if isinstance(text, str) else list(text)
    except ValueError:
        raise UserError(f"relearning steps must be whole numbers separated by commas, not {text!r}") from None
    if any(isinstance(value, bool) or not isinstance(value, int) for value in values):
        raise UserError(f"relearning steps must be whole numbers, not {values!r}")
    if not values or min(values) < 1:
        raise UserError("relearning steps must be at least 1 (e.g. 1,2,4,8)")
    if max(values) > MAX_RELEARN_STEP:
        raise UserError(f"relearning steps go up to {MAX_RELEARN_STEP:,} (the curve trains to the last one)")
    steps = tuple(sorted(set(values)))
    if len(steps) > MAX_RELEARN_POINTS:
        raise UserError(f"at most {MAX_RELEARN_POINTS} relearning steps to evaluate at, not {len(steps)}")
    return steps


@dataclass(frozen=True)
class RobustnessSettings:
    """How the attacks run. `relearn_steps` are the evaluation points of the relearning curve (it trains to the
    last); `relearn_items` forget items are trained on and the others evaluated."""

    chat: bool = True
    batch_size: int = 8
    max_items: int | None = None
    epsilon: float = DEFAULT_EPSILON
    attack_base: bool = True
    relearn_items: int = 2
    relearn_steps: tuple[int, ...] = (1, 2, 4, 8)
    relearn_lr: float = 1e-3
    lora_rank: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "relearn_steps", _parse_steps(self.relearn_steps))
        if self.batch_size < 1 or self.relearn_items < 1 or self.lora_rank < 1:
            raise UserError("batch size, relearning items and LoRA rank must be at least 1")
        check_range(self.batch_size, 1, MAX_BATCH_SIZE, "batch size")
        if self.max_items is not None and self.max_items < 1:
            raise UserError("attack at least one forget item")
        if not self.epsilon > 0 or not self.relearn_lr > 0:
            raise UserError("epsilon and the relearning learning rate must be positive")


def recovery_percent(
    attacked: float, unlearned: float, base: float, epsilon: float = DEFAULT_EPSILON
) -> tuple[float | None, str | None]:
    """(recovery %, None), or (None, why) when the unlearned model is not below the base by at least ε."""
    gap = base - unlearned
    if abs(gap) < epsilon:
        return None, f"{NOTHING_FORGOTTEN}: base and unlearned forget probability differ by {abs(gap):.2g} < ε"
    if gap < 0:
        return None, f"{NOTHING_FORGOTTEN}: the unlearned model scores the forget answers higher than the base"
    return 100.0 * (attacked - unlearned) / gap, None


@dataclass
class AttackOutcome:
    """One attack (variant) on a set of forget items: clean references, attacked probabilities and recovery %.

    `headline` marks the row that stands for the attack (the mean over variants, the last relearning step)."""

    attack: str
    variant: str
    n_items: int
    reference_base: float | None
    reference_unlearned: float | None
    attacked_unlearned: float | None
    attacked_base: float | None = None
    recovery_pct: float | None = None
    reason: str | None = None
    step: int | None = None
    headline: bool = False
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- scoring


def answer_probabilities(
    model: torch.nn.Module, tokenizer: Any, rows: Sequence[Encoded], batch_size: int = 8
) -> np.ndarray:
    """exp(mean answer-token log-prob) of each row under one model; batches of similar length, no gradients."""
    out = np.empty(len(rows))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([rows[i] for i in chunk], pad_id, device)
        with torch.no_grad():
            logp = token_statistics(selected_logits(model, batch), batch.targets, moments=False)["logp"]
        sizes = [len(rows[i].input_ids) - rows[i].score_from for i in chunk]
        for i, part in zip(chunk, logp.float().cpu().split(sizes), strict=True):
            out[i] = float(metrics.probability(-part.mean().item()))
    return out


def encode_row(pair: ModelPair, prompt: str, answer: str, settings: RobustnessSettings) -> Encoded:
    """What an attack scores: the row the evaluation scores under the same template (`scored_row`: under a chat or
    tag template the answer, the end-of-turn tokens and the EOS), so clean and attacked probabilities are the
    evaluation's forget probabilities."""
    return scored_row(pair.tokenizer, prompt, answer, settings.chat, pair.context_length)


@dataclass
class AttackContext:
    """What an attack sees: the pair, the forget items (and retain, for controls), the clean per-item
    probabilities of both sides, the settings, and a progress callback for its own share of the run."""

    pair: ModelPair
    items: list[QAItem]
    retain: list[QAItem]
    settings: RobustnessSettings
    clean: dict[str, np.ndarray]
    progress: Callable[[float, str], None] = lambda fraction, message: None

    def encode(self, prompt: str, answer: str) -> Encoded:
        """The row scored for a (possibly rewritten) prompt and its answer: the evaluation's (`scored_row`)."""
        return encode_row(self.pair, prompt, answer, self.settings)

    def score(self, side: str, rows: Sequence[Encoded]) -> np.ndarray:
        with self.pair.use(side) as model:
            return answer_probabilities(model, self.pair.tokenizer, rows, self.settings.batch_size)

    def outcome(
        self,
        attack: str,
        variant: str,
        positions: Sequence[int],
        attacked_unlearned: float,
        attacked_base: float | None = None,
        **extra: Any,
    ) -> AttackOutcome:
        """An outcome on the items at `positions`, its references and recovery computed on exactly those items."""
        picked = list(positions)
        reference_base = float(self.clean["base"][picked].mean())
        reference_unlearned = float(self.clean["unlearned"][picked].mean())
        recovery, reason = recovery_percent(
            attacked_unlearned, reference_unlearned, reference_base, self.settings.epsilon
        )
        return AttackOutcome(
            attack, variant, len(picked), reference_base, reference_unlearned, float(attacked_unlearned),
            None if attacked_base is None else float(attacked_base), recovery, reason, **extra,
        )  # fmt: skip


def not_applicable(attack: str, reason: str) -> AttackOutcome:
    """An attack that had nothing to act on (no paraphrases, no matching template…): no numbers, the reason."""
    return AttackOutcome(attack, ALL_VARIANTS, 0, None, None, None, reason=reason, headline=True)


# ---------------------------------------------------------------------------------------------- registry


class Attack(ABC):
    """One way of trying to bring forgotten knowledge back. Subclasses set name, description and `run`.

    `option_specs` are the RobustnessSettings fields the attack alone reads (the dashboard draws a control for each)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    option_specs: ClassVar[tuple[Option, ...]] = ()

    def unavailable(self) -> str | None:
        """Why the attack cannot run in this environment (None: it can)."""
        return None

    @abstractmethod
    def run(self, ctx: AttackContext) -> list[AttackOutcome]: ...


def attack_modules(folder: Path = Path(__file__).parent, package: str = __package__) -> tuple[str, ...]:
    """The dotted names of the attack modules in `folder` (this package's): every module but the helpers and the
    private ones, FIRST_ATTACK_MODULES first in their order, then the others by name."""
    found = {info.name for info in pkgutil.iter_modules([str(folder)]) if not info.name.startswith("_")}
    found -= set(NOT_ATTACK_MODULES)
    ordered = [*(name for name in FIRST_ATTACK_MODULES if name in found), *sorted(found - set(FIRST_ATTACK_MODULES))]
    return tuple(f"{package}.{name}" for name in ordered)


ATTACKS: Registry[Attack] = Registry("attack", instantiate=True, providers=attack_modules())
register = ATTACKS.register  # the decorator every attack is added with


def available_attacks() -> list[str]:
    return [name for name, attack in ATTACKS.items() if attack.unavailable() is None]


def describe_attacks() -> str:
    lines = []
    for name, attack in ATTACKS.items():
        why = attack.unavailable()
        lines.append(f"{name:<16} {attack.description}" + (f"  [unavailable here: {why}]" if why else ""))
    return "\n".join(lines)
