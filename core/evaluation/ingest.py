"""Readers for open-unlearning, legacy TOFU and lm-eval result files → one tidy table plus per-item detail.

Layouts read (reference/unlearning-metrics.md): `<BENCH>_EVAL.json` ({metric: {agg_value, value_by_index, …}}),
`<BENCH>_SUMMARY.json` ({metric: value}, also LMEval_SUMMARY.json), a run folder's `checkpoint-<step>/evals/`,
legacy TOFU `eval_log_aggregated.json` ({file name: {stat: {index: value}}}) with its per-split `eval_*.json` and
`aggregate_stat.csv`. Every stored number is kept under its stored name; a file that cannot be read becomes a
warning naming the file (and line) while the rest still loads. Our own evaluation writes the same layout with
`write_open_unlearning`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.common.cache import atomic_write_text
from core.common.errors import UserError
from core.common.limits import MAX_RESULT_FILE_BYTES, check_file_size, loads, nesting_message
from core.evaluation import metrics

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["model", "method", "step", "split", "metric", "value", "source"]
ITEM_COLUMNS = ["model", "method", "step", "metric", "field", "index", "option", "value", "source"]
TEXT_COLUMNS = ["model", "method", "step", "metric", "field", "index", "option", "text", "source"]
_DTYPES = {"step": "Int64", "option": "Int64", "value": "float64"}
FORMAT_VERSION = 1

REFERENCE_METHODS = ("target", "base", "oracle")
_OU_FILE = re.compile(r"^(?P<bench>\w+?)_(?P<kind>EVAL|SUMMARY)\.json$")
_LEGACY_AGGREGATED = "eval_log_aggregated.json"
LEGACY_SPLITS = {  # legacy TOFU file → open-unlearning metric prefix
    "eval_log.json": "retain",
    "eval_log_forget.json": "forget",
    "eval_real_author_wo_options.json": "ra",
    "eval_real_world_wo_options.json": "wf",
}
_LEGACY_CSV = re.compile(r"aggregate_stat\w*\.csv$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WRAPPER_FOLDER = re.compile(r"^(evals(_.+)?|eval_results|ds_size\d+|checkpoint-\d+)$")
_METHODS = (
    "GradAscent", "GradDiff", "SimNPO", "NPO", "IdkDPO", "IdkNLL", "DPO", "RMU", "UNDIAL", "AltPO", "WGA",
    "SatImp", "CE-U", "PDU", "GRU", "RepNoise", "ELM", "KL",
)  # fmt: skip
_METHOD_ALIASES = {"grad_ascent": "GradAscent", "grad_diff": "GradDiff", "idk": "IdkNLL"}
_BASELINES = ((r"full|target", "target"), (r"retain\d+|retrain", "oracle"), (r"base", "base"))
_LEGACY_CSV_SPLITS = {"Real Authors": "ra", "Real World": "wf", "Retain": "retain", "Forget": "forget"}
_LEGACY_CSV_STATS = {"ROUGE": "Q_A_ROUGE", "Prob.": "Q_A_Prob", "Truth Ratio": "Truth_Ratio"}
_LEGACY_CSV_NAMED = {
    "Model Utility": "model_utility",
    "Forget Quality": "forget_quality",
    "KS Test PVal Forget": "forget_quality",
    "KS Test Forget": "forget_ks_statistic",
}
_PRIORITY = {"EVAL": 0, "SUMMARY": 1, "csv": 2, "legacy": 3, "lmeval_samples": 4}


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class IngestWarning:
    """A file (and line, when known) that could not be read as expected; the rest of the input still loads."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


def _frame(rows: list[dict[str, Any]] | list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    """A frame with the fixed columns and dtypes (nullable Int64 steps / options, float values)."""
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({name: dtype for name, dtype in _DTYPES.items() if name in columns})


def _plain(value: Any) -> Any:
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
    return _frame(list(zip(*(data[name] for name in columns), strict=True)), columns)


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


# ---------------------------------------------------------------------------------------------- plain readers


def read_result_text(path: Path) -> str:
    """A result file as UTF-8 text; too big, unreadable or not UTF-8 is a UserError naming the file (a file over
    MAX_RESULT_FILE_BYTES is refused unread)."""
    try:
        check_file_size(path, MAX_RESULT_FILE_BYTES, "result file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte offset {exc.start}); re-save the file as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def read_jsonl_or_lines(path: Path) -> list[Any]:
    """JSON Lines when the first non-blank line is a JSON object or array, else each non-blank line as text.

    TOFU's idontknow.jsonl is plain text despite its name; a malformed line in a real JSON Lines file is a
    UserError naming the file and line.
    """
    lines = [(number, line) for number, line in enumerate(read_result_text(Path(path)).splitlines(), 1)]
    lines = [(number, line.strip()) for number, line in lines if line.strip()]
    if not lines or not lines[0][1].startswith(("{", "[")):
        return [line for _, line in lines]
    records = []
    for number, line in lines:
        try:
            records.append(loads(line, f"{path}:{number}"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: invalid JSON Lines record ({exc.msg})") from None
    return records


def read_records(path: Path) -> list[Any]:
    """A JSON array (or one object) file, else JSON Lines / plain lines (TOFU ships JSON Lines named .json)."""
    text = read_result_text(Path(path))
    try:
        data = loads(text, str(path))
    except json.JSONDecodeError:
        return read_jsonl_or_lines(path)
    return data if isinstance(data, list) else [data]


def _read_json(path: Path, warnings: list[IngestWarning]) -> Any | None:
    """The file's JSON, or None with a warning naming the file (and line) when it cannot be read."""
    try:
        return loads(read_result_text(path), str(path))
    except json.JSONDecodeError as exc:
        warnings.append(IngestWarning(str(path), exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    except UserError as exc:
        warnings.append(IngestWarning(str(path), None, str(exc).removeprefix(f"{path}: ")))
    return None


# ---------------------------------------------------------------------------------------------- run identity


@dataclass(frozen=True)
class RunContext:
    """Who produced the numbers in one folder: model (the run's folder name), method, training step."""

    model: str
    method: str
    step: int | None


def infer_method(name: str) -> str:
    """An unlearning method named in a run's folder name, 'target'/'oracle'/'base' for baselines, else the name."""
    for alias, method in [*_METHOD_ALIASES.items(), *((m, m) for m in _METHODS)]:
        if re.search(rf"(?:^|[_\-/.]){re.escape(alias)}(?:$|[_\-/.])", name, re.IGNORECASE):
            return method
    for pattern, method in _BASELINES:
        if re.search(rf"(?:^|[_\-/.])(?:{pattern})(?:$|[_\-/.])", name, re.IGNORECASE):
            return method
    return name


def infer_run(folder: Path) -> RunContext:
    """Model = the nearest folder that is not an evals / checkpoint-<step> / eval_results / ds_size wrapper."""
    step = None
    model = None
    for part in reversed(Path(folder).absolute().parts):
        match = _CHECKPOINT.match(part)
        if match and step is None:
            step = int(match.group(1))
        if not _WRAPPER_FOLDER.match(part):
            model = part
            break
    model = model or "run"
    return RunContext(model, infer_method(model), step)


# ---------------------------------------------------------------------------------------------- collection


@dataclass
class _Sink:
    """Rows being gathered for one folder (one evaluation), keyed so that duplicates can be merged."""

    run: RunContext
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


def _read_value_by_index(sink: _Sink, metric: str, records: Any, source: str) -> None:
    if not isinstance(records, Mapping):
        sink.warnings.append(IngestWarning(source, None, f"{metric}: value_by_index is not an object"))
        return
    for index, record in records.items():
        fields = record.items() if isinstance(record, Mapping) else [("value", record)]
        for name, value in fields:
            if isinstance(value, list):
                for option, element in enumerate(value):
                    sink.item(metric, name, str(index), option, element, source)
            else:
                sink.item(metric, name, str(index), None, value, source)


def _read_metric_entry(sink: _Sink, bench: str, path: str, entry: Any, source: str) -> None:
    """One metric of an EVAL file; nested objects (MIA forget/holdout) become `metric/key` rows."""
    if not isinstance(entry, Mapping):
        sink.metric(bench, path, entry, source)
        return
    for key, value in entry.items():
        if key == "agg_value":
            sink.metric(bench, path, value, source)
        elif key == "value_by_index":
            _read_value_by_index(sink, path, value, source)
        else:
            _read_metric_entry(sink, bench, f"{path}/{key}", value, source)


def _read_ou_eval(sink: _Sink, bench: str, data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        sink.warnings.append(IngestWarning(source, None, "expected an object of metrics"))
        return
    for name, entry in data.items():
        _read_metric_entry(sink, bench, name, entry, source)


def _read_ou_summary(sink: _Sink, bench: str, data: Any, source: str) -> None:
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


def _read_legacy(sink: _Sink, files: Mapping[str, tuple[Mapping[str, Any], str]]) -> None:
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


def _read_csv_rows(path: Path, warnings: list[IngestWarning]) -> list[dict[str, str]]:
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


def _read_legacy_csv_row(sink: _Sink, row: Mapping[str, str], source: str) -> None:
    """One row of TOFU's aggregate_stat.csv: numbers under open-unlearning names, other cells as text."""
    for column, cell in row.items():
        if column == "Method" or cell in (None, ""):
            continue
        try:
            sink.metric("TOFU-legacy", _legacy_csv_metric(column), float(cell), source)
        except ValueError:
            sink.text(column, "value", None, None, cell, source)


# ---------------------------------------------------------------------------------------------- discovery


def _classify(path: Path) -> tuple[str, str] | None:
    """(kind, benchmark) of a result file, None for anything else."""
    match = _OU_FILE.match(path.name)
    if match:
        bench, kind = match.group("bench"), match.group("kind")
        return ("lmeval_samples", bench) if (bench, kind) == ("LMEval", "EVAL") else (kind, bench)
    if path.name == _LEGACY_AGGREGATED or path.name in LEGACY_SPLITS:
        return ("legacy", "TOFU-legacy")
    if _LEGACY_CSV.search(path.name):
        return ("csv", "TOFU-legacy")
    return None


def _discover(paths: Iterable[Path], warnings: list[IngestWarning]) -> dict[Path, list[Path]]:
    """Result files grouped by folder; checkpoint-<step> folders without any become warnings."""
    found: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if path.is_file() and _classify(path) is None:
            warnings.append(IngestWarning(str(path), None, "not a known result file (EVAL/SUMMARY json, legacy TOFU)"))
        for candidate in candidates:
            if _classify(candidate) is not None:
                found.setdefault(candidate.parent.resolve(), []).append(candidate)
        if path.is_dir():
            warnings.extend(_empty_checkpoints(path))
    for folder in found:
        found[folder] = sorted(set(found[folder]), key=lambda p: (_PRIORITY[_classify(p)[0]], p.name))
    return found


def _empty_checkpoints(root: Path) -> Iterator[IngestWarning]:
    folders = [root] if _CHECKPOINT.match(root.name) else []
    for folder in [*folders, *sorted(root.rglob("checkpoint-*"))]:
        if folder.is_dir() and _CHECKPOINT.match(folder.name) and not _has_results(folder):
            yield IngestWarning(str(folder), None, "checkpoint has no evaluation files (expected evals/*.json)")


def _has_results(folder: Path) -> bool:
    return any(_classify(path) for path in folder.rglob("*") if path.is_file())


def _read_folder(folder: Path, files: list[Path], run: RunContext, method_override: str | None) -> list[_Sink]:
    """One folder is one evaluation; extra rows of a legacy aggregate_stat.csv become runs of their own."""
    warnings: list[IngestWarning] = []
    tables = [(path, _read_csv_rows(path, warnings)) for path in files if _classify(path)[0] == "csv"]
    rows = [(str(path), row) for path, table in tables for row in table]
    if rows and rows[0][1].get("Method") and method_override is None:
        run = replace(run, method=rows[0][1]["Method"])
    sink = _Sink(run, warnings=warnings)
    extra = [_Sink(replace(run, method=row.get("Method") or run.method)) for _, row in rows[1:]]
    for target, (source, row) in zip([sink, *extra], rows, strict=False):
        _read_legacy_csv_row(target, row, source)
    legacy: dict[str, tuple[Mapping[str, Any], str]] = {}
    for path in files:
        kind, bench = _classify(path)
        if kind in ("csv", "lmeval_samples"):
            if kind == "lmeval_samples":
                log.info("%s: per-sample lm-eval logs are not tabulated; its SUMMARY is", path)
            continue
        data = _read_json(path, sink.warnings)
        if data is None:
            continue
        try:
            _read_result_data(sink, legacy, path, kind, bench, data)
        except RecursionError:  # json read it, but the nested metric walk is deeper than the stack allows
            sink.warnings.append(IngestWarning(str(path), None, f"{nesting_message()}; rows before it are kept"))
    if legacy:
        _read_legacy(sink, legacy)
    return [sink, *extra]


def _read_result_data(
    sink: _Sink, legacy: dict[str, tuple[Mapping[str, Any], str]], path: Path, kind: str, bench: str, data: Any
) -> None:
    if kind == "EVAL":
        _read_ou_eval(sink, bench, data, str(path))
    elif kind == "SUMMARY":
        _read_ou_summary(sink, bench, data, str(path))
    else:
        _merge_legacy(legacy, path, data, sink.warnings)


def _merge_legacy(
    legacy: dict[str, tuple[Mapping[str, Any], str]], path: Path, data: Any, warnings: list[IngestWarning]
) -> None:
    """Add a legacy file; the aggregated file's entries and the per-split files it copies are merged once."""
    if not isinstance(data, Mapping):
        warnings.append(IngestWarning(str(path), None, "expected an object"))
        return
    entries = data if path.name == _LEGACY_AGGREGATED else {path.name: data}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping) or not all(isinstance(column, Mapping) for column in entry.values()):
            warnings.append(IngestWarning(str(path), None, f"{name}: expected {{stat: {{index: value}}}}"))
        elif name not in legacy:
            legacy[name] = (entry, str(path))
        elif legacy[name][0] != entry:
            warnings.append(IngestWarning(str(path), None, f"{name} differs from the copy in {legacy[name][1]}"))


# ---------------------------------------------------------------------------------------------- forget quality


_TRUTH_RATIO_ITEMS = {
    ("forget_truth_ratio", "score"),
    ("forget_Truth_Ratio", "score"),
    ("eval_log_forget", "truth_ratio"),
}


def forget_truth_ratios(
    items: pd.DataFrame, model: str, step: int | None = None, source: str | None = None
) -> np.ndarray | None:
    """Per-item forget truth ratios of one run (open-unlearning or legacy layout), or None when it has none."""
    keys = pd.Series(list(zip(items["metric"], items["field"], strict=True)), index=items.index, dtype=object)
    steps = items["step"].isna() if step is None else items["step"].eq(step).fillna(False)
    rows = items[keys.isin(_TRUTH_RATIO_ITEMS) & items["model"].eq(model) & steps]
    if source is not None:
        rows = rows[rows["source"] == source]
    if rows.empty:
        return None
    if rows["source"].nunique() > 1:
        raise UserError(f"{model} has forget truth ratios in several files: {sorted(rows['source'].unique())}")
    return rows["value"].to_numpy()


def _sink_truth_ratios(sink: _Sink) -> tuple[np.ndarray, str] | None:
    rows = [row for row in sink.items if (row[3], row[4]) in _TRUTH_RATIO_ITEMS]  # (metric, field)
    return (np.array([row[7] for row in rows]), rows[0][8]) if rows else None  # (value, source)


def _final(sinks: list[_Sink]) -> _Sink | None:
    """The oracle's final evaluation: the one without a step, else the latest checkpoint."""
    usable = [sink for sink in sinks if _sink_truth_ratios(sink) is not None]
    return max(usable, key=lambda sink: math.inf if sink.run.step is None else sink.run.step, default=None)


def _folder_of(sink: _Sink) -> str:
    return str(Path(next(iter(sink.summary.values()))["source"]).parent)


def _add_forget_quality(sinks: list[_Sink], oracle_sinks: list[_Sink], oracle: Path) -> None:
    """Fill forget_quality where a TOFU run lacks it, from its and the oracle's per-item forget truth ratios."""
    reference = _final(oracle_sinks)
    if reference is None:
        raise UserError(f"oracle {oracle} has no per-item forget truth ratios (TOFU_EVAL.json or eval_log_forget)")
    oracle_ratios, oracle_source = _sink_truth_ratios(reference)
    for sink in sinks:
        stored = [row for (_, name), row in sink.summary.items() if name == "forget_quality"]
        found = _sink_truth_ratios(sink)
        if any(not math.isnan(row["value"]) for row in stored):
            continue
        if found is None:
            if any(bench == "TOFU" for bench, _ in sink.summary):
                message = "no per-item forget truth ratios (needs TOFU_EVAL.json): forget quality not computed"
                sink.warnings.append(IngestWarning(_folder_of(sink), None, message))
            continue
        ratios, source = found
        if ratios.size != oracle_ratios.size:
            message = f"{ratios.size} forget items vs the oracle's {oracle_ratios.size}: forget quality not computed"
            sink.warnings.append(IngestWarning(source, None, message))
            continue
        value = metrics.forget_quality(ratios, oracle_ratios)
        bench = next((bench for (bench, name) in sink.summary if name == "forget_quality"), "TOFU")
        sink.metric(bench, "forget_quality", value, f"{source} vs oracle {oracle_source}", stored=False)


# ---------------------------------------------------------------------------------------------- ingest


def ingest(
    paths: Sequence[Path | str],
    *,
    oracle: Path | str | None = None,
    model: str | None = None,
    method: str | None = None,
    step: int | None = None,
) -> IngestResult:
    """Read every result file under `paths` (and the oracle's folder) into one IngestResult.

    model/method/step override what folder names say, for every run found. With `oracle`, forget quality is
    computed for TOFU runs that lack it; the oracle's own rows get method 'oracle'.
    """
    warnings: list[IngestWarning] = []
    oracle_folders = _discover([Path(oracle)], warnings) if oracle is not None else {}
    folders = {k: v for k, v in _discover([Path(p) for p in paths], warnings).items() if k not in oracle_folders}
    if not folders and not oracle_folders and not warnings:
        raise UserError(f"no result files found under {', '.join(map(str, paths))}")
    sinks = []
    for folder, files in sorted(folders.items()):
        inferred = infer_run(folder)
        run = RunContext(model or inferred.model, method or inferred.method, inferred.step if step is None else step)
        sinks += _read_folder(folder, files, run, method)
    oracle_sinks = []
    for folder, files in sorted(oracle_folders.items()):
        oracle_sinks += _read_folder(folder, files, replace(infer_run(folder), method="oracle"), "oracle")
    if oracle is not None:
        _add_forget_quality(sinks, oracle_sinks, Path(oracle))
    result = _assemble([*sinks, *oracle_sinks], warnings, [*folders.values(), *oracle_folders.values()])
    for warning in result.warnings:
        log.warning("%s", warning)
    return result


def _assemble(sinks: list[_Sink], warnings: list[IngestWarning], files: list[list[Path]]) -> IngestResult:
    summary = [{k: v for k, v in row.items() if k != "_stored"} for sink in sinks for row in sink.summary.values()]
    frame = _frame(summary, SUMMARY_COLUMNS)
    frame = frame.sort_values(["model", "method", "step"], na_position="last", kind="stable").reset_index(drop=True)
    return IngestResult(
        summary=frame,
        items=_frame([row for sink in sinks for row in sink.items], ITEM_COLUMNS),
        texts=_frame([row for sink in sinks for row in sink.texts], TEXT_COLUMNS),
        warnings=[*warnings, *(warning for sink in sinks for warning in sink.warnings)],
        files=[str(path) for group in files for path in group if _classify(path)[0] != "lmeval_samples"],
    )


# ---------------------------------------------------------------------------------------------- writer


def _json_ready(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN as null, keys as strings."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(element) for key, element in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_ready(element) for element in value]
    return _plain(value)


def _node(logs: dict[str, Any], path: list[str]) -> dict[str, Any]:
    node = logs
    for part in path:
        node = node.setdefault(part, {})
    return node


def _add_per_item(logs: dict[str, Any], frame: pd.DataFrame, column: str) -> None:
    columns = [frame[name].tolist() for name in ("metric", "field", "index", "option", column)]
    for metric, name, index, option, value in zip(*columns, strict=True):
        record = _node(logs, metric.split("/")).setdefault("value_by_index", {}).setdefault(index, {})
        if option is pd.NA:
            record[name] = _plain(value)
        else:
            record.setdefault(name, []).append(_plain(value))


def _single_evaluation(result: IngestResult) -> None:
    runs = [f"{model} {method} {step}" for model, method, step in result.runs().itertuples(index=False)]
    folders = {str(Path(source).parent) for source in result.items["source"].unique()}
    if len(runs) > 1 or len(folders) > 1:
        raise UserError(f"write_open_unlearning needs one evaluation, got several: {sorted(runs) or sorted(folders)}")


def _logs_from_result(result: IngestResult) -> dict[str, Any]:
    """Rebuild open-unlearning's nested EVAL layout from one evaluation's rows (`a/b` names nest)."""
    _single_evaluation(result)
    logs: dict[str, Any] = {}
    items = result.items.sort_values("option", kind="stable", na_position="first")
    _add_per_item(logs, items, "value")
    _add_per_item(logs, result.texts[result.texts["index"].notna()], "text")
    for row in result.summary.itertuples(index=False):
        path = row.metric.split("/") if row.source.endswith("_EVAL.json") else [row.metric]
        parent = _node(logs, path[:-1])
        if len(path) == 1 or isinstance(parent.get(path[-1]), dict):
            _node(logs, path)["agg_value"] = _plain(row.value)
        else:
            parent[path[-1]] = _plain(row.value)
    return logs


def write_open_unlearning(
    results: Mapping[str, Any] | IngestResult,
    out_dir: Path | str,
    benchmark: str = "TOFU",
    summary_metrics: Iterable[str] | None = None,
) -> tuple[Path, Path]:
    """Write `<benchmark>_EVAL.json` and `<benchmark>_SUMMARY.json` in open-unlearning's layout; return their paths.

    `results` maps metric → {"agg_value": x, "value_by_index": {index: {field: value}}, …} (a bare number is
    taken as agg_value), or is an IngestResult holding a single evaluation, which is re-exported. The SUMMARY
    holds every defined agg_value, or only `summary_metrics` (open-unlearning lists just its configured metrics,
    not their pre-computed components).
    """
    if not re.fullmatch(r"\w+", benchmark):
        raise UserError(f"benchmark name {benchmark!r} must be letters, digits or _")
    logs = _logs_from_result(results) if isinstance(results, IngestResult) else dict(results)
    logs = {name: entry if isinstance(entry, Mapping) else {"agg_value": entry} for name, entry in logs.items()}
    logs = _json_ready(dict(sorted(logs.items())))
    wanted = set(logs if summary_metrics is None else summary_metrics)
    summary = {name: entry["agg_value"] for name, entry in logs.items() if name in wanted}
    summary = {name: value for name, value in summary.items() if value is not None}
    out = Path(out_dir)
    eval_path, summary_path = out / f"{benchmark}_EVAL.json", out / f"{benchmark}_SUMMARY.json"
    atomic_write_text(eval_path, json.dumps(logs, indent=4, allow_nan=False))
    atomic_write_text(summary_path, json.dumps(summary, indent=4, allow_nan=False))
    return eval_path, summary_path
