"""The logit-lens attack: the answer read from the best intermediate layer of each model."""

from __future__ import annotations

import math

import numpy as np

from core.attacks.base import Attack, AttackContext, AttackOutcome, register
from core.models.pair import SIDES


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
