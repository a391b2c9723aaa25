"""Running attacks on a pair and a forget set, and their result (a table, JSON) for the CLI and the dashboard."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from core.attacks.base import (
    ATTACKS,
    METRIC,
    AttackContext,
    AttackOutcome,
    RobustnessSettings,
    answer_probabilities,
    available_attacks,
    encode_row,
    recovery_percent,
)
from core.common.errors import UserError
from core.common.limits import loads
from core.data.qa import QAItem, SplitData, load_split_folder
from core.models.pair import SIDES, ModelPair

log = logging.getLogger(__name__)

RESULT_FORMAT = "unlearning-lens/robustness/1"

Progress = Callable[[float, str], None]  # (fraction of the whole run done, what is running)


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
    rows = [encode_row(pair, item.question, item.answer, settings) for item in items]
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
