"""An evaluation call's result: each model's EVAL entries (Evaluation) and the tidy tables drawn from them
(EvalResult)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.common.errors import UserError
from core.evaluation import metrics
from core.evaluation.settings import EvalSettings
from core.evaluation.tables import record_rows, walk_entry

RESULT_FORMAT = "unlearning-lens/evaluation/1"
SUMMARY_COLUMNS = ["model", "method", "step", "split", "metric", "value"]
ITEM_COLUMNS = ["model", "method", "step", "metric", "field", "index", "option", "value"]
TEXT_COLUMNS = ["model", "method", "step", "metric", "field", "index", "text"]


@dataclass
class Evaluation:
    """One model (or checkpoint) evaluated: its EVAL entries exactly as written to `folder`."""

    model: str
    method: str
    step: int | None
    logs: dict[str, Any]
    folder: str | None = None
    cached: bool = False


def _flatten(logs: Mapping[str, Any]) -> Iterator[tuple[str, str, str | None, Any]]:
    """(kind, metric, index, value) as core.evaluation.ingest reads an EVAL file: ("summary", metric, None,
    agg_value) and ("item", metric, index, the item's record); nested keys become `metric/key` names."""
    for name, entry in logs.items():
        for kind, path, value in walk_entry(name, entry):
            if kind == "summary":
                yield "summary", path, None, value
            else:
                for index, record in value.items():
                    yield "item", path, index, record


@dataclass
class EvalResult:
    """Every evaluation of one call, with the settings used and the oracle forget quality was measured against."""

    evaluations: list[Evaluation]
    settings: EvalSettings = field(default_factory=EvalSettings)
    oracle: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """The tidy table: model, method, step, split, metric, value (null metrics as NaN)."""
        rows = [
            (e.model, e.method, e.step, metrics.describe(name).split, name, math.nan if value is None else value)
            for e in self.evaluations
            for kind, name, _, value in _flatten(e.logs)
            if kind == "summary"
        ]
        frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"step": "Int64", "value": "float64"})
        return frame.sort_values(["model", "method", "step", "metric"], na_position="last").reset_index(drop=True)

    def items(self) -> pd.DataFrame:
        """Per-item numbers: model, method, step, metric, field, index, option (list position), value."""
        rows = [
            (e.model, e.method, e.step, name, field_name, index, option, value)
            for e in self.evaluations
            for kind, name, index, record in _flatten(e.logs)
            if kind == "item"
            for field_name, option, value in record_rows(record)
            if not isinstance(value, str)
        ]
        return pd.DataFrame(rows, columns=ITEM_COLUMNS).astype({"step": "Int64", "option": "Int64", "value": "float64"})

    def texts(self) -> pd.DataFrame:
        """Per-item texts (ROUGE's input, ground truth and generation)."""
        rows = [
            (e.model, e.method, e.step, name, field_name, index, value)
            for e in self.evaluations
            for kind, name, index, record in _flatten(e.logs)
            if kind == "item"
            for field_name, option, value in record_rows(record)
            if isinstance(value, str)
        ]
        return pd.DataFrame(rows, columns=TEXT_COLUMNS).astype({"step": "Int64"})

    def evaluation(self, model: str, step: int | None = None) -> Evaluation:
        for candidate in self.evaluations:
            if candidate.model == model and candidate.step == step:
                return candidate
        raise UserError(f"no evaluation of {model} at step {step}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "settings": dataclasses.asdict(self.settings),
            "oracle": self.oracle,
            "evaluations": [dataclasses.asdict(e) for e in self.evaluations],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        if data.get("format") != RESULT_FORMAT:
            raise UserError(f"not an evaluation result (format {data.get('format')!r}, expected {RESULT_FORMAT})")
        return cls([Evaluation(**e) for e in data["evaluations"]], EvalSettings(**data["settings"]), data.get("oracle"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        return cls.from_dict(json.loads(text))
