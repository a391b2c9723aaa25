"""Prompt attacks: the forget question rewritten (paraphrased, behind a jailbreak prefix, after other question-answer
pairs, translated) while the forget answer is scored; their templates are in assets/attacks/."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from core.attacks.base import ALL_VARIANTS, Attack, AttackContext, AttackOutcome, not_applicable, register
from core.common.paths import ASSETS
from core.data.qa import QAItem
from core.models.pair import SIDES

ATTACK_ASSETS = ASSETS / "attacks"


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


class TemplatedAttack(PromptAttack):
    """A prompt attack whose templates are one file of assets/attacks/, named by the class keyword `templates`
    (`class Jailbreak(TemplatedAttack, templates="jailbreak.jsonl")`) and kept as `templates_file`."""

    templates_file: ClassVar[Path]

    def __init_subclass__(cls, templates: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if templates is not None:
            cls.templates_file = ATTACK_ASSETS / templates

    def templates(self) -> Any:
        """The templates file read: a list of records for JSON lines (.jsonl), else the JSON document."""
        text = self.templates_file.read_text(encoding="utf-8")
        if self.templates_file.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)


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
class Jailbreak(TemplatedAttack, templates="jailbreak.jsonl"):
    name = "jailbreak"
    description = "jailbreak-style prefixes before the question (assets/attacks/jailbreak.jsonl)"

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        return {
            entry["name"]: [
                (i, entry["template"].replace("{question}", item.question)) for i, item in enumerate(ctx.items)
            ]
            for entry in self.templates()
        }


@register
class InContext(TemplatedAttack, templates="in_context.json"):
    name = "in_context"
    description = "other question-answer pairs restated before the question (assets/attacks/in_context.json)"

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        spec = self.templates()
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
class Translation(TemplatedAttack, templates="translations.json"):
    name = "translation"
    description = "the question in French, Spanish and German (assets/attacks/translations.json), English answer"

    def empty_reason(self) -> str:
        return f"no forget question matches a template in {self.templates_file.name}"

    def variants(self, ctx: AttackContext) -> dict[str, list[tuple[int, str]]]:
        spec = self.templates()
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
