"""AttributionResult: the maps of both sides and Δ, with the numbers that check them, as tables and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from core.analyses.attribution.settings import AttributionSettings
from core.common.serial import JsonResult


@dataclass
class AttributionResult(JsonResult):
    """Attribution maps per side (rows: answer tokens/words or the whole answer; columns: prompt tokens/words,
    then the answer's own earlier tokens with `include_answer_prefix`) and Δ.

    `convergence_delta[side][row]` is Σ attributions − what they should add up to: for integrated gradients
    F(input) − F(baseline) (the quadrature error of the completeness axiom), for AttnLRP the answer's logit
    (`explained`; relevance lost in biases and in the softmax rule); `logprob` and `baseline_logprob` are F at both
    ends.
    """

    method: str
    prompt: str
    answer: str
    chat: bool
    settings: AttributionSettings
    prompt_tokens: list[str]
    answer_tokens: list[str]
    base: list[list[float]]
    unlearned: list[list[float]]
    delta: list[list[float]]
    logprob: dict[str, list[float]]
    baseline_logprob: dict[str, list[float]]
    convergence_delta: dict[str, list[float]] | None = None
    contrast_exact: bool = False  # True when Δ was attributed itself (perturbation methods)
    explained: dict[str, list[float]] | None = None  # what the map sums to by its axiom (None: logprob − baseline)

    def explained_change(self, side: str) -> list[float]:
        """Per row, the number the side's map should add up to: `explained` where the method says (AttnLRP: the
        answer's logits), else F(input) − F(baseline) (integrated gradients' completeness)."""
        if self.explained is not None:
            return self.explained[side]
        return [a - b for a, b in zip(self.logprob[side], self.baseline_logprob[side], strict=True)]

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (answer row, prompt feature) with the base, unlearned and Δ attributions."""
        records = [
            {
                "row": r,
                "answer_token": answer,
                "feature": f,
                "prompt_token": token,
                "base": self.base[r][f],
                "unlearned": self.unlearned[r][f],
                "delta": self.delta[r][f],
            }
            for r, answer in enumerate(self.answer_tokens)
            for f, token in enumerate(self.prompt_tokens)
        ]
        columns = ["row", "answer_token", "feature", "prompt_token", "base", "unlearned", "delta"]
        return pd.DataFrame(records, columns=columns)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributionResult:
        fields_ = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields_["settings"] = AttributionSettings(**data["settings"])
        return cls(**fields_)
