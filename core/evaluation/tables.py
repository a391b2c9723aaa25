"""The tidy tables ingest produces (summary, per-item numbers, texts: IngestResult) and what reads them: the
rows of one run (`rows_at`) and a per-item record as rows (`record_rows`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.common.cache import atomic_write_text
from core.common.errors import UserError
from core.common.limits import loads
from core.evaluation.files import read_result_text

SUMMARY_COLUMNS = ["model", "method", "step", "split", "metric", "value", "source"]
ITEM_COLUMNS = ["model", "method", "step", "metric", "field", "index", "option", "value", "source"]
TEXT_COLUMNS = ["model", "method", "step", "metric", "field", "index", "option", "text", "source"]
_DTYPES = {"step": "Int64", "option": "Int64", "value": "float64"}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IngestWarning:
    """A file (and line, when known) that could not be read as expected; the rest of the input still loads."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


def typed_frame(rows: list[dict[str, Any]] | list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    """A frame with the fixed columns and dtypes (nullable Int64 steps / options, float values)."""
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({name: dtype for name, dtype in _DTYPES.items() if name in columns})


def plain(value: Any) -> Any:
    """A JSON-ready scalar: NaN / NA become None, numpy scalars become Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _frame_to_dict(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """Column name → values, missing values as null (floats keep every digit: json writes repr)."""
    return {name: frame[name].astype(object).where(frame[name].notna(), None).tolist() for name in frame.columns}


def _frame_from_dict(data: Mapping[str, list[Any]], columns: list[str]) -> pd.DataFrame:
    if list(data) != columns:
        raise UserError(f"ingest result has columns {list(data)}, expected {columns}")
    return typed_frame(list(zip(*(data[name] for name in columns), strict=True)), columns)


@dataclass
class IngestResult:
    """The tidy summary table, per-item numbers and texts of every run read, with the warnings raised."""

    summary: pd.DataFrame
    items: pd.DataFrame
    texts: pd.DataFrame
    warnings: list[IngestWarning] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """The summary table: model, method, step, split, metric, value, source."""
        return self.summary.copy()

    def runs(self) -> pd.DataFrame:
        """One row per (model, method, step) found."""
        return self.summary[["model", "method", "step"]].drop_duplicates().reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "summary": _frame_to_dict(self.summary),
            "items": _frame_to_dict(self.items),
            "texts": _frame_to_dict(self.texts),
            "warnings": [asdict(warning) for warning in self.warnings],
            "files": list(self.files),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestResult:
        if data.get("version") != FORMAT_VERSION:
            raise UserError(f"ingest result format version {data.get('version')!r} is not {FORMAT_VERSION}")
        return cls(
            summary=_frame_from_dict(data["summary"], SUMMARY_COLUMNS),
            items=_frame_from_dict(data["items"], ITEM_COLUMNS),
            texts=_frame_from_dict(data["texts"], TEXT_COLUMNS),
            warnings=[IngestWarning(**warning) for warning in data["warnings"]],
            files=list(data["files"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, source: str = "<ingest result>") -> IngestResult:
        data = loads(text, source)
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: not an ingest result (expected an object, found {type(data).__name__})")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: not an ingest result ({type(exc).__name__}: {exc})") from None

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> IngestResult:
        try:
            return cls.from_json(read_result_text(Path(path)), str(path))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not an ingest result: invalid JSON ({exc.msg})") from None


def rows_at(frame: pd.DataFrame, model: str, step: int | None) -> pd.DataFrame:
    """The rows of one run: `model` at `step` (None: the rows without a step, a model's final evaluation)."""
    steps = frame["step"].isna() if step is None else frame["step"].eq(step).fillna(False)
    return frame[frame["model"].eq(model) & steps]


def record_rows(record: Any) -> Iterator[tuple[str, int | None, Any]]:
    """One item's record of a `value_by_index` as (field, option, value) rows: a list is one row per option (its
    position), a bare value is field `value`."""
    fields = record.items() if isinstance(record, Mapping) else [("value", record)]
    for name, value in fields:
        options = enumerate(value) if isinstance(value, list) else [(None, value)]
        for option, element in options:
            yield name, option, element


def walk_entry(path: str, entry: Any) -> Iterator[tuple[str, str, Any]]:
    """One metric of an EVAL file as ("summary", metric, agg_value) and ("items", metric, value_by_index) parts;
    nested objects (MIA forget/holdout) become `metric/key` metrics, a bare value is the metric's summary."""
    if not isinstance(entry, Mapping):
        yield "summary", path, entry
        return
    for key, value in entry.items():
        if key == "agg_value":
            yield "summary", path, value
        elif key == "value_by_index":
            yield "items", path, value
        else:
            yield from walk_entry(f"{path}/{key}", value)
