"""Readers of one evaluation's files into rows (Sink): open-unlearning EVAL/SUMMARY files, legacy TOFU per-split
logs (aggregates computed) and legacy aggregate_stat.csv files."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.common.errors import UserError
from core.common.limits import loads
from core.evaluation import metrics
from core.evaluation.files import read_result_text
from core.evaluation.run_names import RunIdentity
from core.evaluation.tables import IngestWarning, record_rows, walk_entry

LEGACY_AGGREGATED = "eval_log_aggregated.json"
LEGACY_SPLITS = {  # legacy TOFU file → open-unlearning metric prefix
    "eval_log.json": "retain",
    "eval_log_forget.json": "forget",
    "eval_real_author_wo_options.json": "ra",
    "eval_real_world_wo_options.json": "wf",
}
LEGACY_CSV = re.compile(r"aggregate_stat\w*\.csv$")
_LEGACY_CSV_SPLITS = {"Real Authors": "ra", "Real World": "wf", "Retain": "retain", "Forget": "forget"}
_LEGACY_CSV_STATS = {"ROUGE": "Q_A_ROUGE", "Prob.": "Q_A_Prob", "Truth Ratio": "Truth_Ratio"}
_LEGACY_CSV_NAMED = {
    "Model Utility": "model_utility",
    "Forget Quality": "forget_quality",
    "KS Test PVal Forget": "forget_quality",
    "KS Test Forget": "forget_ks_statistic",
}


def read_json(path: Path, warnings: list[IngestWarning]) -> Any | None:
    """The file's JSON, or None with a warning naming the file (and line) when it cannot be read."""
    try:
        return loads(read_result_text(path), str(path))
    except json.JSONDecodeError as exc:
        warnings.append(IngestWarning(str(path), exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    except UserError as exc:
        warnings.append(IngestWarning(str(path), None, str(exc).removeprefix(f"{path}: ")))
    return None


@dataclass
class Sink:
    """Rows being gathered for one folder (one evaluation), keyed so that duplicates can be merged."""

    run: RunIdentity
    summary: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    items: list[tuple[Any, ...]] = field(default_factory=list)  # rows in ITEM_COLUMNS order
    texts: list[tuple[Any, ...]] = field(default_factory=list)  # rows in TEXT_COLUMNS order
    warnings: list[IngestWarning] = field(default_factory=list)

    def metric(self, bench: str, name: str, value: Any, source: str, *, stored: bool = True) -> None:
        """One summary number; a stored number wins over one we computed, the first stored over later ones."""
        number = _number(value)
        if number is _NOT_A_NUMBER:
            self.warnings.append(IngestWarning(source, None, f"{name}: {value!r} is not a number (kept as text)"))
            self.text(name, "value", None, None, str(value), source)
            return
        row = {"model": self.run.model, "method": self.run.method, "step": self.run.step}
        row |= {"split": metrics.describe(name).split, "metric": name, "value": number}
        row |= {"source": source if stored else f"computed from {source}", "_stored": stored}
        key = (bench, name)
        previous = self.summary.get(key)
        self._check_agreement(previous, row)
        if previous is None or (stored and not previous["_stored"]) or math.isnan(previous["value"]):
            self.summary[key] = row

    def _check_agreement(self, previous: dict[str, Any] | None, row: dict[str, Any]) -> None:
        if previous is None:
            return
        a, b = previous["value"], row["value"]
        if not (math.isnan(a) or math.isnan(b) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)):
            message = f"{row['metric']} = {b!r} disagrees with {a!r} in {previous['source']}"
            self.warnings.append(IngestWarning(row["source"], None, message))

    def item(self, metric: str, name: str, index: str, option: int | None, value: Any, source: str) -> None:
        number = _number(value)
        if number is _NOT_A_NUMBER:
            text = value if isinstance(value, str) else json.dumps(value)
            self.text(metric, name, index, option, text, source)
            return
        run = self.run
        self.items.append((run.model, run.method, run.step, metric, name, index, option, number, source))

    def text(self, metric: str, name: str, index: str | None, option: int | None, text: str, source: str) -> None:
        run = self.run
        self.texts.append((run.model, run.method, run.step, metric, name, index, option, text, source))


_NOT_A_NUMBER = object()


def _number(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    return _NOT_A_NUMBER


# ---------------------------------------------------------------------------------------------- open-unlearning


def _read_value_by_index(sink: Sink, metric: str, records: Any, source: str) -> None:
    if not isinstance(records, Mapping):
        sink.warnings.append(IngestWarning(source, None, f"{metric}: value_by_index is not an object"))
        return
    for index, record in records.items():
        for name, option, value in record_rows(record):
            sink.item(metric, name, str(index), option, value, source)


def _read_metric_entry(sink: Sink, bench: str, path: str, entry: Any, source: str) -> None:
    """One metric of an EVAL file; nested objects (MIA forget/holdout) become `metric/key` rows."""
    for kind, metric, value in walk_entry(path, entry):
        if kind == "summary":
            sink.metric(bench, metric, value, source)
        else:
            _read_value_by_index(sink, metric, value, source)


def read_ou_eval(sink: Sink, bench: str, data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        sink.warnings.append(IngestWarning(source, None, "expected an object of metrics"))
        return
    for name, entry in data.items():
        _read_metric_entry(sink, bench, name, entry, source)


def read_ou_summary(sink: Sink, bench: str, data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        sink.warnings.append(IngestWarning(source, None, "expected an object of metric values"))
        return
    for name, value in data.items():
        sink.metric(bench, name, value, source)


# ---------------------------------------------------------------------------------------------- legacy TOFU


def _legacy_column(entry: Mapping[str, Any], stat: str, order: list[str]) -> np.ndarray:
    column = entry[stat]
    return np.array([column[index] for index in order], dtype=float)


def _legacy_aggregates(prefix: str, entry: Mapping[str, Any]) -> dict[str, float]:
    """TOFU's aggregate_eval_stat.py definitions (no epsilon) for one legacy split file."""
    order = list(entry["avg_gt_loss"])
    gt_prob = metrics.probability(_legacy_column(entry, "avg_gt_loss", order))
    wrong_loss = _legacy_column(entry, "average_perturb_loss", order)
    ratios = metrics.truth_ratio(_legacy_column(entry, "avg_paraphrased_loss", order), wrong_loss, eps=0.0)
    out = {f"{prefix}_Q_A_ROUGE": float(np.mean(_legacy_column(entry, "rougeL_recall", order)))}
    if prefix in ("forget", "retain"):
        out[f"{prefix}_Q_A_Prob"] = float(np.mean(gt_prob))
    else:
        wrong_prob = metrics.probability(wrong_loss)
        out[f"{prefix}_Q_A_Prob_normalised"] = float(np.mean(metrics.normalised_probability(gt_prob, wrong_prob, 0)))
    if prefix == "forget":
        out["forget_truth_ratio"] = metrics.truth_ratio_forget(ratios, eps=0.0)
    else:
        out[f"{prefix}_Truth_Ratio"] = metrics.truth_ratio_retain(ratios)
    return out


def read_legacy(sink: Sink, files: Mapping[str, tuple[Mapping[str, Any], str]]) -> None:
    """Legacy per-split logs ({file name: (content, source)}): items kept verbatim, aggregates computed."""
    components: dict[str, float] = {}
    for name, (entry, source) in files.items():
        metric = name.removesuffix(".json")
        for stat, column in entry.items():
            _read_value_by_index(sink, metric, {index: {stat: value} for index, value in column.items()}, source)
        if name not in LEGACY_SPLITS:
            continue
        try:
            aggregates = _legacy_aggregates(LEGACY_SPLITS[name], entry)
        except (KeyError, TypeError, ValueError) as exc:
            sink.warnings.append(IngestWarning(source, None, f"{name}: cannot compute TOFU aggregates ({exc!r})"))
            continue
        for metric_name, value in aggregates.items():
            sink.metric("TOFU-legacy", metric_name, value, source, stored=False)
        components |= aggregates
    if all(name in components for name in metrics.MODEL_UTILITY_COMPONENTS):
        source = next(iter(files.values()))[1]
        sink.metric("TOFU-legacy", "model_utility", metrics.model_utility(components), source, stored=False)


def _legacy_csv_metric(column: str) -> str:
    if column in _LEGACY_CSV_NAMED:
        return _LEGACY_CSV_NAMED[column]
    for stat, suffix in _LEGACY_CSV_STATS.items():
        for split, prefix in _LEGACY_CSV_SPLITS.items():
            if column in (f"{stat} {split}", f"{split} {stat}"):
                normalised = prefix in ("ra", "wf") and stat == "Prob."
                name = "forget_truth_ratio" if (prefix, stat) == ("forget", "Truth Ratio") else f"{prefix}_{suffix}"
                return f"{name}_normalised" if normalised else name
    return column


def read_csv_rows(path: Path, warnings: list[IngestWarning]) -> list[dict[str, str]]:
    """The rows of a legacy aggregate CSV; a file that cannot be read, or a row with more cells than the header
    (DictReader would put them in a list under None) or fewer (a truncated file), becomes a warning naming the
    line and no rows."""
    try:
        text = read_result_text(path)
    except UserError as exc:
        warnings.append(IngestWarning(str(path), None, str(exc).removeprefix(f"{path}: ")))
        return []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            columns = len(row) - (None in row)
            cells = columns + len(row.get(None, [])) - sum(value is None for value in row.values())
            if cells != columns:
                message = f"invalid CSV: {cells} cells, but the header has {columns}"
                warnings.append(IngestWarning(str(path), reader.line_num, message))
                return []
            rows.append(row)
    except csv.Error as exc:
        warnings.append(IngestWarning(str(path), reader.line_num, f"invalid CSV: {exc}"))
        return []
    return rows


def read_legacy_csv_row(sink: Sink, row: Mapping[str, str], source: str) -> None:
    """One row of TOFU's aggregate_stat.csv: numbers under open-unlearning names, other cells as text."""
    for column, cell in row.items():
        if column == "Method" or cell in (None, ""):
            continue
        try:
            sink.metric("TOFU-legacy", _legacy_csv_metric(column), float(cell), source)
        except ValueError:
            sink.text(column, "value", None, None, cell, source)
