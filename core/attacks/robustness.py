"""Attacks that try to bring forgotten knowledge back: is it erased, or only hidden?

Each attack scores the forget answers under an attacked unlearned model — a rewritten prompt, a quantised copy,
a copy fine-tuned on a few forget items, a reading of its intermediate layers — and reports

    recovery % = (p_attacked − p_unlearned) / (p_base − p_unlearned) × 100

on the same items, with p the forget-answer probability (TOFU's "probability": the mean over items of the
geometric mean of the answer-token probabilities, teacher-forced, one forward pass per batch). Where base and
unlearned differ by less than ε there is nothing to recover and recovery is None with the reason. Prompt and
quantisation attacks are also applied to the base, to tell an attack that helps any model from one that undoes
unlearning. The pair is never modified: weight attacks work on merged copies.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import html
import importlib.util
import json
import logging
import math
import re
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from core.analyses.probe import Encoded, collate, encode, selected_logits
from core.common import Option, Registry
from core.common.errors import UserError
from core.common.limits import (
    MAX_BATCH_SIZE,
    MAX_RELEARN_POINTS,
    MAX_RELEARN_STEP,
    check_range,
    ensure_fits,
    loads,
    model_shape,
    module_bytes,
    saved_for_backward,
)
from core.common.paths import ASSETS
from core.data.qa import QAItem, SplitData, load_split_folder
from core.evaluation import metrics
from core.evaluation.evaluate import next_token_statistics
from core.models.pair import SIDES, ModelPair

log = logging.getLogger(__name__)

ATTACK_ASSETS = ASSETS / "attacks"
METRIC = "forget_probability"
DEFAULT_EPSILON = 1e-3
NOTHING_FORGOTTEN = "nothing was forgotten to recover"
ALL_VARIANTS = "all"
RESULT_FORMAT = "unlearning-lens/robustness/1"

Progress = Callable[[float, str], None]  # (fraction of the whole run done, what is running)


# ---------------------------------------------------------------------------------------------- settings, results


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


@dataclass
class RobustnessResult:
    """Every attack's outcomes on one pair and forget set, with the clean forget probabilities of both sides."""

    pair: dict[str, Any]
    n_items: int
    base: float
    unlearned: float
    epsilon: float
    settings: dict[str, Any]
    outcomes: list[AttackOutcome]
    note: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    metric: str = METRIC

    def headlines(self) -> list[AttackOutcome]:
        return [o for o in self.outcomes if o.headline]

    def relearning(self) -> list[AttackOutcome]:
        """The relearning curve, in step order (step 0: the unlearned model's merged copy, before training)."""
        return sorted((o for o in self.outcomes if o.step is not None), key=lambda o: o.step)

    def to_frame(self) -> pd.DataFrame:
        """One row per outcome; `base_shift` is the attack's effect on the base (attacked − clean)."""
        rows = []
        for o in self.outcomes:
            row = {k: v for k, v in asdict(o).items() if k != "details"}
            shift = None
            if o.attacked_base is not None and o.reference_base is not None:
                shift = o.attacked_base - o.reference_base
            row["base_shift"] = shift
            row["details"] = json.dumps(o.details, ensure_ascii=False) if o.details else ""
            rows.append(row)
        columns = [*(f.name for f in dataclasses.fields(AttackOutcome) if f.name != "details"), "base_shift", "details"]
        return pd.DataFrame(rows, columns=columns)

    def to_dict(self) -> dict[str, Any]:
        return {"format": RESULT_FORMAT, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustnessResult:
        if not isinstance(data, dict) or "outcomes" not in data:
            raise UserError("not a robustness result (expected an object with outcomes)")
        fields_ = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            fields_["outcomes"] = [AttackOutcome(**o) for o in data["outcomes"]]
            return cls(**fields_)
        except TypeError as exc:  # a missing or unknown field, or an outcome that is not an object
            raise UserError(f"not a robustness result ({exc})") from None

    @classmethod
    def from_json(cls, text: str) -> RobustnessResult:
        try:
            return cls.from_dict(loads(text, "robustness result"))
        except json.JSONDecodeError as exc:
            raise UserError(f"not valid JSON ({exc.msg}, line {exc.lineno})") from None


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
        no_moments = torch.zeros(len(batch.targets), dtype=torch.bool, device=device)
        with torch.no_grad():
            logp = next_token_statistics(selected_logits(model, batch), batch.targets, no_moments)["logp"]
        sizes = [len(rows[i].input_ids) - rows[i].score_from for i in chunk]
        for i, part in zip(chunk, logp.float().cpu().split(sizes), strict=True):
            out[i] = float(metrics.probability(-part.mean().item()))
    return out


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
        return encode(self.pair.tokenizer, prompt, answer, self.settings.chat, self.pair.context_length)

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


ATTACKS: Registry[Attack] = Registry("attack", instantiate=True)
register = ATTACKS.register  # the decorator every attack below is added with


def available_attacks() -> list[str]:
    return [name for name, attack in ATTACKS.items() if attack.unavailable() is None]


def describe_attacks() -> str:
    lines = []
    for name, attack in ATTACKS.items():
        why = attack.unavailable()
        lines.append(f"{name:<16} {attack.description}" + (f"  [unavailable here: {why}]" if why else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- prompt attacks


class PromptAttack(Attack):
    """Rewrites each forget question; the answer scored stays the forget answer. Variants are scored in one pass
    per side, each against the clean references of the items it covers; a row "all" averages the variants."""

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        """variant name → (item position, attacked prompt) pairs."""
        raise NotImplementedError

    def empty_reason(self) -> str:
        return "no forget item can be rewritten by this attack"

    def run(self, ctx: AttackContext) -> list[AttackOutcome]:
        variants = {name: pairs for name, pairs in self.variants(ctx).items() if pairs}
        if not variants:
            return [not_applicable(self.name, self.empty_reason())]
        flat = [(name, position, prompt) for name, pairs in variants.items() for position, prompt in pairs]
        rows = [ctx.encode(prompt, ctx.items[position].answer) for _, position, prompt in flat]
        sides = SIDES if ctx.settings.attack_base else ("unlearned",)
        probs = {}
        for done, side in enumerate(sides):
            ctx.progress(done / len(sides), f"{self.name}: scoring {len(rows)} prompts under {side}")
            probs[side] = ctx.score(side, rows)
        outcomes = []
        for name in variants:
            picked = [i for i, (variant, _, _) in enumerate(flat) if variant == name]
            positions = [flat[i][1] for i in picked]
            attacked_base = float(probs["base"][picked].mean()) if "base" in probs else None
            example = flat[picked[0]][2]
            outcomes.append(
                ctx.outcome(
                    self.name, name, positions, float(probs["unlearned"][picked].mean()), attacked_base,
                    details={"example_prompt": example},
                )
            )  # fmt: skip
        if len(outcomes) == 1:
            outcomes[0].headline = True
        else:
            outcomes.append(_mean_of_variants(ctx, self.name, outcomes, variants))
        return outcomes


def _mean_of_variants(
    ctx: AttackContext, attack: str, outcomes: list[AttackOutcome], variants: dict[str, list[tuple[int, str]]]
) -> AttackOutcome:
    """The "all" row: every (variant, item) prompt weighted equally, references over the same weighting."""
    positions = [position for pairs in variants.values() for position, _ in pairs]
    weights = [o.n_items for o in outcomes]
    attacked = float(np.average([o.attacked_unlearned for o in outcomes], weights=weights))
    bases = [o.attacked_base for o in outcomes]
    attacked_base = None if None in bases else float(np.average(bases, weights=weights))
    mean = ctx.outcome(attack, ALL_VARIANTS, positions, attacked, attacked_base, headline=True)
    best = max(outcomes, key=lambda o: -math.inf if o.recovery_pct is None else o.recovery_pct)
    mean.details = {"variants": len(outcomes), "best_variant": best.variant, "best_recovery_pct": best.recovery_pct}
    mean.n_items = len(set(positions))
    return mean


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@register
class Paraphrase(PromptAttack):
    name = "paraphrase"
    description = "the forget question reworded (the set's paraphrased_question), the same answer scored"

    def empty_reason(self) -> str:
        return "no forget item has a paraphrased_question"

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        pairs = [(i, item.paraphrased_question) for i, item in enumerate(ctx.items) if item.paraphrased_question]
        return {"paraphrased_question": pairs}


@register
class Jailbreak(PromptAttack):
    name = "jailbreak"
    description = "jailbreak-style prefixes before the question (assets/attacks/jailbreak.jsonl)"
    templates_file: ClassVar[Path] = ATTACK_ASSETS / "jailbreak.jsonl"

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        return {
            entry["name"]: [
                (i, entry["template"].replace("{question}", item.question)) for i, item in enumerate(ctx.items)
            ]
            for entry in _read_jsonl(self.templates_file)
        }


@register
class InContext(PromptAttack):
    name = "in_context"
    description = "other question-answer pairs restated before the question (assets/attacks/in_context.json)"
    templates_file: ClassVar[Path] = ATTACK_ASSETS / "in_context.json"

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        spec = json.loads(self.templates_file.read_text(encoding="utf-8"))
        out = {}
        for variant in spec["variants"]:
            pool = ctx.items if variant["source"] == "forget" else ctx.retain
            pairs = []
            for i, item in enumerate(ctx.items):
                examples = context_examples(item, pool, int(variant["examples"]))
                if examples:
                    text = variant["separator"].join(
                        variant["example"].replace("{question}", e.question).replace("{answer}", e.answer)
                        for e in examples
                    )
                    pairs.append(
                        (i, variant["template"].replace("{examples}", text).replace("{question}", item.question))
                    )
            out[variant["name"]] = pairs
        return out


def context_examples(item: QAItem, pool: Sequence[QAItem], count: int) -> list[QAItem]:
    """Up to `count` other items of `pool`, never the item itself or one with the same answer: those about the same
    `entity` (where the set names one) first, each group in pool order starting after the item (cyclically)."""
    position = next((k for k, e in enumerate(pool) if e.index == item.index), -1)
    ordered = [*pool[position + 1 :], *pool[: position + 1]]
    others = [e for e in ordered if e.index != item.index and e.answer.strip() != item.answer.strip()]
    entity = item.extra.get("entity")
    if entity is not None:
        others.sort(key=lambda e: e.extra.get("entity") != entity)  # stable: same entity first, order kept
    return others[:count]


@register
class Translation(PromptAttack):
    name = "translation"
    description = "the question in French, Spanish and German (assets/attacks/translations.json), English answer"
    templates_file: ClassVar[Path] = ATTACK_ASSETS / "translations.json"

    def empty_reason(self) -> str:
        return f"no forget question matches a template in {self.templates_file.name}"

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        spec = json.loads(self.templates_file.read_text(encoding="utf-8"))
        out: dict[str, list[tuple[int, str]]] = {language: [] for language in spec["languages"]}
        for i, item in enumerate(ctx.items):
            for language, text in translate(item.question, spec).items():
                out[language].append((i, text))
        return out


_SLOT = re.compile(r"\{(\w+)\}")


def translate(question: str, spec: dict[str, Any]) -> dict[str, str]:
    """The question in every language of `spec` whose English template matches it whole; {} when none does."""
    for template in spec["templates"]:
        pattern = "".join(
            f"(?P<{piece}>[^?]+?)" if k % 2 else re.escape(piece) for k, piece in enumerate(_SLOT.split(template["en"]))
        )
        match = re.fullmatch(pattern, question.strip())
        if match is None:
            continue
        out = {}
        for language in spec["languages"]:
            values = {
                slot: spec.get("slots", {}).get(slot, {}).get(language, {}).get(value, value)
                for slot, value in match.groupdict().items()
            }
            out[language] = _SLOT.sub(lambda m, v=values: v[m.group(1)], template[language])
        return out
    return {}


# ---------------------------------------------------------------------------------------------- weight attacks


def _unwrap_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Merge each PEFT layer's active adapters into its base layer (unless adapters are disabled) and put the base
    layer in its place: a plain model computing what the adapted one did."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        if not module.disable_adapters:
            active = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
            if active:
                module.merge(adapter_names=active)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):  # set on the backbone by PEFT; a plain copy has no adapters any more
        del model.peft_config
    return model


def merged_copy(
    pair: ModelPair, side: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """An independent plain copy of one side (adapters merged into the copied weights): the pair is untouched.
    Refused first when the copy would not fit the free memory (a failed copy on a CPU can end the server)."""
    with pair.use(side) as model:
        ensure_copy_fits(model, pair.device, device or pair.device, dtype or pair.dtype, f"copying the {side} model")
        clone = copy.deepcopy(model)
    clone = _unwrap_adapters(clone)
    clone.to(device=device or pair.device, dtype=dtype or pair.dtype)
    clone.eval()
    clone.requires_grad_(False)
    return clone


def ensure_copy_fits(
    model: torch.nn.Module,
    source: torch.device | str,
    target: torch.device | str,
    dtype: torch.dtype,
    what: str,
    extra: int = 0,
) -> None:
    """Refuse a copy of `model` (deep-copied where it is, then converted to `dtype` on `target`) that would not
    fit, with `extra` bytes more needed on `target` (e.g. training activations)."""
    copied, converted = module_bytes(model), module_bytes(model, dtype)
    if torch.device(source).type == torch.device(target).type:
        converts = any(p.is_floating_point() and p.dtype != dtype for p in model.parameters())
        # converting makes a second copy while the first is alive; `.to` the same dtype and device makes none
        ensure_fits(copied + (converted if converts else 0) + extra, target, what)
        return
    ensure_fits(copied, source, what)
    ensure_fits(converted + extra, target, what)


def quantized_int8_copy(pair: ModelPair, side: str) -> torch.nn.Module:
    """A merged fp32 CPU copy of one side with every Linear layer dynamically quantised to int8 (weights int8,
    activations quantised per batch): how an unlearned model is often shipped on CPU."""
    clone = merged_copy(pair, side, device="cpu", dtype=torch.float32)
    with warnings.catch_warnings():
        # torch.ao.quantization warns it will move to torchao; torch 2.13 still ships it and torchao is no dependency
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(clone, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


class _QuantisedAttack(Attack):
    """Score the forget answers under quantised copies of the unlearned model (and of the base)."""

    variant: ClassVar[str] = ""

    def quantised(self, pair: ModelPair, side: str) -> torch.nn.Module:
        raise NotImplementedError

    def run(self, ctx: AttackContext) -> list[AttackOutcome]:
        rows = [ctx.encode(item.question, item.answer) for item in ctx.items]
        sides = ("unlearned", "base") if ctx.settings.attack_base else ("unlearned",)
        probs = {}
        for done, side in enumerate(sides):
            ctx.progress(done / len(sides), f"{self.name}: quantising the {side} model")
            model = self.quantised(ctx.pair, side)
            probs[side] = answer_probabilities(model, ctx.pair.tokenizer, rows, ctx.settings.batch_size)
            del model
        positions = list(range(len(ctx.items)))
        attacked_base = float(probs["base"].mean()) if "base" in probs else None
        outcome = ctx.outcome(self.name, self.variant, positions, float(probs["unlearned"].mean()), attacked_base)
        outcome.headline = True
        return [outcome]


@register
class QuantizeInt8(_QuantisedAttack):
    name = "quantize_int8"
    description = "int8 dynamic quantisation of a merged copy on CPU (torch.ao quantize_dynamic on Linear layers)"
    variant = "int8 dynamic (CPU)"

    def quantised(self, pair: ModelPair, side: str) -> torch.nn.Module:
        return quantized_int8_copy(pair, side)


def _bitsandbytes_missing() -> str | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs the bitsandbytes package"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return None


class _BitsAndBytes(_QuantisedAttack):
    """A merged copy saved and reloaded through bitsandbytes (the adapter is inside the quantised weights)."""

    bits: ClassVar[int] = 4

    def unavailable(self) -> str | None:
        return _bitsandbytes_missing()

    def quantised(self, pair: ModelPair, side: str) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        config = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=pair.dtype)
            if self.bits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        device = pair.device if pair.device.type == "cuda" else torch.device("cuda")
        with tempfile.TemporaryDirectory(prefix="ulens-quant-") as folder:
            clone = merged_copy(pair, side)
            clone.save_pretrained(folder, safe_serialization=True)
            del clone
            model = AutoModelForCausalLM.from_pretrained(
                folder, quantization_config=config, device_map={"": device.index or 0}, dtype=pair.dtype
            )
        model.eval()
        return model


@register
class Quantize4bit(_BitsAndBytes):
    name = "quantize_4bit"
    description = "4-bit NF4 quantisation of a merged copy with bitsandbytes (CUDA only)"
    variant = "nf4 (bitsandbytes)"
    bits = 4


@register
class Quantize8bit(_BitsAndBytes):
    name = "quantize_8bit"
    description = "8-bit LLM.int8 quantisation of a merged copy with bitsandbytes (CUDA only)"
    variant = "int8 (bitsandbytes)"
    bits = 8


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for a block without changing the caller's random state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def relearn_split(count: int, train: int, seed: int) -> tuple[list[int], list[int]]:
    """Positions trained on and positions evaluated: a seeded choice of `train` of `count` items (at least one
    item is always left to evaluate)."""
    if count < 2:
        raise UserError("relearning needs at least 2 forget items: some to train on, the rest to evaluate")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    k = min(train, count - 1)
    return sorted(order[:k]), sorted(order[k:])


@register
class Relearn(Attack):
    name = "relearn"
    description = "a few LoRA fine-tuning steps on some forget items, then the others re-scored (a curve over steps)"
    # Defaults are RobustnessSettings'; the steps are typed as the comma-separated text it parses.
    option_specs = (
        Option("relearn_items", int, RobustnessSettings.relearn_items, "Forget items trained on; the others are "
               "evaluated.", min=1, label="Items trained on"),
        Option("relearn_steps", str, ",".join(map(str, RobustnessSettings.relearn_steps)), "Steps at which the "
               f"held-out items are scored (1..{MAX_RELEARN_STEP:,}); training runs to the last.",
               label="Evaluate at steps"),
        Option("relearn_lr", float, RobustnessSettings.relearn_lr, "Learning rate of the LoRA fine-tuning.",
               min=1e-6, max=1.0, label="Learning rate"),
        Option("lora_rank", int, RobustnessSettings.lora_rank, "Rank of the LoRA adapter trained.", min=1, max=256,
               label="LoRA rank"),
    )  # fmt: skip

    def run(self, ctx: AttackContext) -> list[AttackOutcome]:
        settings = ctx.settings
        if len(ctx.items) < 2:
            return [not_applicable(self.name, "relearning needs at least 2 forget items (train on some, score others)")]
        trained, evaluated = relearn_split(len(ctx.items), settings.relearn_items, settings.seed)
        ctx.progress(0.0, f"{self.name}: copying the unlearned model")
        _ensure_relearning_fits(ctx, [ctx.items[p] for p in trained])
        copy_ = merged_copy(ctx.pair, "unlearned", dtype=torch.float32)
        with torch.inference_mode(False), torch.enable_grad(), _seeded(settings.seed, next(copy_.parameters()).device):
            curve = relearning_curve(ctx, copy_, trained, evaluated)
        trained_on = [ctx.items[p].index for p in trained]
        last = max(settings.relearn_steps)
        return [
            ctx.outcome(
                self.name, f"step {step}", evaluated, probability, step=step, headline=step == last,
                details={"trained_on": trained_on, "train_loss": loss},
            )
            for step, probability, loss in curve
        ]  # fmt: skip


def _ensure_relearning_fits(ctx: AttackContext, trained: list[QAItem]) -> None:
    """Refuse relearning when the fp32 copy plus one training batch's activations (every layer kept for the
    backward pass) would not fit: LoRA's own weights and optimiser state are small beside them."""
    rows = [ctx.encode(item.question, item.answer) for item in trained[:8]]  # TrainConfig's batch is at most 8
    length = max(len(row.input_ids) for row in rows)
    with ctx.pair.use("unlearned") as model:
        shape = model_shape(model)
        training = saved_for_backward(shape, len(rows), length, 4)
        training += len(rows) * length * shape.vocab * 4 * 3  # logits, their gradient, log-softmax
        what = f"relearning on a float32 copy of the unlearned model ({len(rows)} items of up to {length} tokens)"
        ensure_copy_fits(model, ctx.pair.device, ctx.pair.device, torch.float32, what, training)


def relearning_curve(
    ctx: AttackContext, model: torch.nn.Module, trained: list[int], evaluated: list[int]
) -> list[tuple[int, float, float | None]]:
    """Fine-tune a new LoRA adapter on `model` (a copy: it is changed) with the items at `trained`; at step 0 and
    at each of the settings' steps, the mean probability of the answers at `evaluated` (and the step's loss)."""
    from core.unlearn import TrainConfig, TrainingData, build_trainee, get_method, lora_config, train

    settings, tokenizer = ctx.settings, ctx.pair.tokenizer
    rows = [ctx.encode(ctx.items[p].question, ctx.items[p].answer) for p in evaluated]
    lora = lora_config(settings.lora_rank, 2.0 * settings.lora_rank, "all-linear")
    trainee = build_trainee(model, "relearning copy", None, tokenizer, lora, keep_reference=False)
    curve: list[tuple[int, float, float | None]] = []

    def evaluate(step: int, loss: float | None) -> None:
        was_training = trainee.model.training
        trainee.model.eval()
        probability = float(answer_probabilities(trainee.model, tokenizer, rows, settings.batch_size).mean())
        curve.append((step, probability, loss))
        trainee.model.train(was_training)

    def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
        if step in settings.relearn_steps:
            evaluate(step, terms.get("loss"))
        ctx.progress(step / steps, f"relearn: step {step}/{steps}")

    config = TrainConfig(
        steps=max(settings.relearn_steps),
        lr=settings.relearn_lr,
        batch_size=min(len(trained), 8),
        seed=settings.seed,
        chat=settings.chat,
        max_length=ctx.pair.context_length,
    )
    evaluate(0, None)
    data = TrainingData(forget=[ctx.items[p] for p in trained])
    train(trainee, tokenizer, get_method("finetune")(), data, config, progress=on_step, show_bar=False)
    return curve


# ---------------------------------------------------------------------------------------------- reading attacks


@register
class LogitLens(Attack):
    name = "logit_lens"
    description = (
        "the answer read from the best intermediate layer (logit lens; core.analyses.lens hidden-knowledge score)"
    )

    def run(self, ctx: AttackContext) -> list[AttackOutcome]:
        from core.analyses.lens import logit_lens

        peaks: dict[str, list[float]] = {side: [] for side in SIDES}
        scores: dict[str, list[float]] = {side: [] for side in SIDES}
        layers: list[int] = []
        for done, item in enumerate(ctx.items):
            ctx.progress(done / len(ctx.items), f"{self.name}: item {done + 1}/{len(ctx.items)}")
            knowledge = logit_lens(ctx.pair, item.question, item.answer, ctx.settings.chat).hidden_knowledge()
            for side in SIDES:
                peaks[side].append(math.exp(knowledge[side].peak_logprob))
                scores[side].append(knowledge[side].score)
            layers.append(knowledge["unlearned"].peak_layer)
        outcome = ctx.outcome(
            self.name, "best layer per item", range(len(ctx.items)), float(np.mean(peaks["unlearned"])),
            float(np.mean(peaks["base"])), headline=True,
            details={
                "hidden_knowledge_score_unlearned": float(np.mean(scores["unlearned"])),
                "hidden_knowledge_score_base": float(np.mean(scores["base"])),
                "peak_layers_unlearned": layers,
            },
        )  # fmt: skip
        return [outcome]


# ---------------------------------------------------------------------------------------------- running


def _forget_items(data: SplitData | Sequence[QAItem], max_items: int | None) -> tuple[list[QAItem], list[QAItem]]:
    if isinstance(data, SplitData):
        forget = list(data.forget.items) if data.forget is not None else []
        retain = list(data.retain.items) if data.retain is not None else []
    else:
        forget, retain = list(data), []
    if not forget:
        raise UserError("the forget set is empty: there is nothing to attack (give a folder with forget.jsonl)")
    return forget[:max_items], retain


def check_attacks(attacks: Sequence[str]) -> list[str]:
    """The attack names, normalised and deduplicated; a UserError for none, an unknown one or one that cannot run."""
    names = [a.strip().lower() for a in attacks if a.strip()]
    if not names:
        raise UserError(f"choose at least one attack: {', '.join(ATTACKS)}")
    for name in names:
        if name not in ATTACKS:
            raise UserError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
        why = ATTACKS[name].unavailable()
        if why:
            raise UserError(f"attack {name} cannot run here: it {why}")
    return list(dict.fromkeys(names))


def run_attacks(
    pair: ModelPair,
    data: SplitData | Sequence[QAItem],
    attacks: Sequence[str] | None = None,
    settings: RobustnessSettings | None = None,
    progress: Progress | None = None,
) -> RobustnessResult:
    """Run the named attacks (default: every one that can run here) on the forget set → RobustnessResult."""
    settings = settings or RobustnessSettings()
    names = check_attacks(attacks if attacks is not None else available_attacks())
    items, retain = _forget_items(data, settings.max_items)
    say = progress or (lambda fraction, message: None)
    share = 1.0 / (len(names) + 1)
    say(0.0, f"scoring {len(items)} forget answers under both models")
    rows = [encode(pair.tokenizer, i.question, i.answer, settings.chat, pair.context_length) for i in items]
    clean = {}
    for side in SIDES:
        with pair.use(side) as model:
            clean[side] = answer_probabilities(model, pair.tokenizer, rows, settings.batch_size)
    base, unlearned = float(clean["base"].mean()), float(clean["unlearned"].mean())
    _, note = recovery_percent(unlearned, unlearned, base, settings.epsilon)
    outcomes: list[AttackOutcome] = []
    seconds: dict[str, float] = {}
    for k, name in enumerate(names):
        offset = (k + 1) * share

        def report(fraction: float, message: str, offset: float = offset) -> None:
            say(offset + share * min(1.0, max(0.0, fraction)), message)

        report(0.0, f"{name}: starting")
        began = time.perf_counter()
        ctx = AttackContext(pair, items, retain, settings, clean, report)
        outcomes += ATTACKS[name].run(ctx)
        seconds[name] = round(time.perf_counter() - began, 3)
        log.info("attack %s took %.1f s", name, seconds[name])
    say(1.0, "done")
    return RobustnessResult(
        pair=pair.describe(),
        n_items=len(items),
        base=base,
        unlearned=unlearned,
        epsilon=settings.epsilon,
        settings={**asdict(settings), "relearn_steps": list(settings.relearn_steps)},
        outcomes=outcomes,
        note=note,
        seconds=seconds,
    )


def load_robustness_data(data: str) -> SplitData:
    """`demo` for the demo experiment's splits (the quick recipe's under ULENS_DEMO_QUICK=1), else a split folder."""
    if data.strip().lower() == "demo":
        from core.unlearn.demo import DemoExperiment

        return DemoExperiment().data
    return load_split_folder(data, require=("forget",))


# ---------------------------------------------------------------------------------------------- figures


def _esc(text: Any) -> str:
    return html.escape(str(text))


def recovery_figure(result: RobustnessResult) -> go.Figure:
    """One bar per attack: recovery % of the forget probability (bars missing where nothing could be measured,
    with the reason in the hover), 0 % = the unlearned model, 100 % = the base."""
    rows = result.headlines()
    labels = [_esc(o.attack) for o in rows]
    values = [o.recovery_pct for o in rows]
    hover = [
        _esc(o.reason) if o.recovery_pct is None else
        f"{_esc(o.variant)}: {o.attacked_unlearned:.4f} attacked vs {o.reference_unlearned:.4f} unlearned, "
        f"{o.reference_base:.4f} base ({o.n_items} items)"
        for o in rows
    ]  # fmt: skip
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=values,
            text=["n/a" if v is None else f"{v:.1f}%" for v in values],
            textposition="outside",
            customdata=hover,
            hovertemplate="%{x}<br>%{customdata}<extra></extra>",
            marker_color=["#bbbbbb" if v is None else "#d62728" if v >= 50 else "#1f77b4" for v in values],
            name="recovery %",
        )
    )
    figure.add_hline(y=100, line_dash="dot", line_color="#7f7f7f", annotation_text="base")
    figure.add_hline(y=0, line_color="#222222")
    figure.update_layout(
        title="Recovery of forgotten answers by attack",
        yaxis_title="recovery % (0 = unlearned, 100 = base)",
        xaxis_title="attack",
        showlegend=False,
        margin={"t": 60},
    )
    return figure


def relearning_figure(result: RobustnessResult) -> go.Figure:
    """Forget probability of the held-out forget items against relearning steps, with the clean base and unlearned
    levels on the same items."""
    curve = result.relearning()
    if not curve:
        raise UserError("this result has no relearning curve (run the relearn attack)")
    steps = [o.step for o in curve]
    figure = go.Figure(
        go.Scatter(
            x=steps,
            y=[o.attacked_unlearned for o in curve],
            mode="lines+markers",
            name="relearned unlearned model",
            customdata=[o.recovery_pct for o in curve],
            hovertemplate="step %{x}: p = %{y:.4f}<br>recovery %{customdata:.1f}%<extra></extra>",
        )
    )
    figure.add_hline(y=curve[0].reference_base, line_dash="dash", line_color="#222222", annotation_text="base")
    figure.add_hline(y=curve[0].reference_unlearned, line_dash="dot", line_color="#7f7f7f", annotation_text="unlearned")
    figure.update_layout(
        title=f"Relearning: forget probability of the {curve[0].n_items} held-out forget items",
        xaxis_title="LoRA fine-tuning steps on the other forget items",
        yaxis_title="forget probability",
    )
    return figure
