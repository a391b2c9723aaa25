"""Readers for open-unlearning, legacy TOFU and lm-eval result files → one tidy table plus per-item detail.

Layouts read (reference/unlearning-metrics.md): `<BENCH>_EVAL.json` ({metric: {agg_value, value_by_index, …}}),
`<BENCH>_SUMMARY.json` ({metric: value}, also LMEval_SUMMARY.json), a run folder's `checkpoint-<step>/evals/`,
legacy TOFU `eval_log_aggregated.json` ({file name: {stat: {index: value}}}) with its per-split `eval_*.json` and
`aggregate_stat.csv`. Every stored number is kept under its stored name; a file that cannot be read becomes a
warning naming the file (and line) while the rest still loads. Our own evaluation writes the same layout with
`write_open_unlearning`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.common.errors import UserError
from core.common.limits import nesting_message
from core.evaluation import metrics
from core.evaluation.files import read_jsonl_or_lines, read_records
from core.evaluation.readers import (
    LEGACY_AGGREGATED,
    LEGACY_CSV,
    LEGACY_SPLITS,
    Sink,
    read_csv_rows,
    read_json,
    read_legacy,
    read_legacy_csv_row,
    read_ou_eval,
    read_ou_summary,
)
from core.evaluation.run_names import CHECKPOINT_FOLDER, RunIdentity, infer_method, infer_run
from core.evaluation.tables import (
    ITEM_COLUMNS,
    SUMMARY_COLUMNS,
    TEXT_COLUMNS,
    IngestResult,
    IngestWarning,
    rows_at,
    typed_frame,
)
from core.evaluation.writer import write_open_unlearning

# The ingest API, whichever module of this package defines each part (files, tables, run_names, writer).
__all__ = [
    "ITEM_COLUMNS",
    "REFERENCE_METHODS",
    "SUMMARY_COLUMNS",
    "TEXT_COLUMNS",
    "IngestResult",
    "IngestWarning",
    "forget_truth_ratios",
    "infer_method",
    "infer_run",
    "ingest",
    "read_jsonl_or_lines",
    "read_records",
    "write_open_unlearning",
]

log = logging.getLogger(__name__)

REFERENCE_METHODS = ("target", "base", "oracle")
_OU_FILE = re.compile(r"^(?P<bench>\w+?)_(?P<kind>EVAL|SUMMARY)\.json$")
_PRIORITY = {"EVAL": 0, "SUMMARY": 1, "csv": 2, "legacy": 3, "lmeval_samples": 4}


# ---------------------------------------------------------------------------------------------- discovery


def _classify(path: Path) -> tuple[str, str] | None:
    """(kind, benchmark) of a result file, None for anything else."""
    match = _OU_FILE.match(path.name)
    if match:
        bench, kind = match.group("bench"), match.group("kind")
        return ("lmeval_samples", bench) if (bench, kind) == ("LMEval", "EVAL") else (kind, bench)
    if path.name == LEGACY_AGGREGATED or path.name in LEGACY_SPLITS:
        return ("legacy", "TOFU-legacy")
    if LEGACY_CSV.search(path.name):
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
    folders = [root] if CHECKPOINT_FOLDER.match(root.name) else []
    for folder in [*folders, *sorted(root.rglob("checkpoint-*"))]:
        if folder.is_dir() and CHECKPOINT_FOLDER.match(folder.name) and not _has_results(folder):
            yield IngestWarning(str(folder), None, "checkpoint has no evaluation files (expected evals/*.json)")


def _has_results(folder: Path) -> bool:
    return any(_classify(path) for path in folder.rglob("*") if path.is_file())


def _read_folder(folder: Path, files: list[Path], run: RunIdentity, method_override: str | None) -> list[Sink]:
    """One folder is one evaluation; extra rows of a legacy aggregate_stat.csv become runs of their own."""
    warnings: list[IngestWarning] = []
    tables = [(path, read_csv_rows(path, warnings)) for path in files if _classify(path)[0] == "csv"]
    rows = [(str(path), row) for path, table in tables for row in table]
    if rows and rows[0][1].get("Method") and method_override is None:
        run = replace(run, method=rows[0][1]["Method"])
    sink = Sink(run, warnings=warnings)
    extra = [Sink(replace(run, method=row.get("Method") or run.method)) for _, row in rows[1:]]
    for target, (source, row) in zip([sink, *extra], rows, strict=False):
        read_legacy_csv_row(target, row, source)
    legacy: dict[str, tuple[Mapping[str, Any], str]] = {}
    for path in files:
        kind, bench = _classify(path)
        if kind in ("csv", "lmeval_samples"):
            if kind == "lmeval_samples":
                log.info("%s: per-sample lm-eval logs are not tabulated; its SUMMARY is", path)
            continue
        data = read_json(path, sink.warnings)
        if data is None:
            continue
        try:
            _read_result_data(sink, legacy, path, kind, bench, data)
        except RecursionError:  # json read it, but the nested metric walk is deeper than the stack allows
            sink.warnings.append(IngestWarning(str(path), None, f"{nesting_message()}; rows before it are kept"))
    if legacy:
        read_legacy(sink, legacy)
    return [sink, *extra]


def _read_result_data(
    sink: Sink, legacy: dict[str, tuple[Mapping[str, Any], str]], path: Path, kind: str, bench: str, data: Any
) -> None:
    if kind == "EVAL":
        read_ou_eval(sink, bench, data, str(path))
    elif kind == "SUMMARY":
        read_ou_summary(sink, bench, data, str(path))
    else:
        _merge_legacy(legacy, path, data, sink.warnings)


def _merge_legacy(
    legacy: dict[str, tuple[Mapping[str, Any], str]], path: Path, data: Any, warnings: list[IngestWarning]
) -> None:
    """Add a legacy file; the aggregated file's entries and the per-split files it copies are merged once."""
    if not isinstance(data, Mapping):
        warnings.append(IngestWarning(str(path), None, "expected an object"))
        return
    entries = data if path.name == LEGACY_AGGREGATED else {path.name: data}
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
    rows = rows_at(items[keys.isin(_TRUTH_RATIO_ITEMS)], model, step)
    if source is not None:
        rows = rows[rows["source"] == source]
    if rows.empty:
        return None
    if rows["source"].nunique() > 1:
        raise UserError(f"{model} has forget truth ratios in several files: {sorted(rows['source'].unique())}")
    return rows["value"].to_numpy()


def _sink_truth_ratios(sink: Sink) -> tuple[np.ndarray, str] | None:
    rows = [row for row in sink.items if (row[3], row[4]) in _TRUTH_RATIO_ITEMS]  # (metric, field)
    return (np.array([row[7] for row in rows]), rows[0][8]) if rows else None  # (value, source)


def _final(sinks: list[Sink]) -> Sink | None:
    """The oracle's final evaluation: the one without a step, else the latest checkpoint."""
    usable = [sink for sink in sinks if _sink_truth_ratios(sink) is not None]
    return max(usable, key=lambda sink: math.inf if sink.run.step is None else sink.run.step, default=None)


def _folder_of(sink: Sink) -> str:
    return str(Path(next(iter(sink.summary.values()))["source"]).parent)


def _add_forget_quality(sinks: list[Sink], oracle_sinks: list[Sink], oracle: Path) -> None:
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
        run = RunIdentity(model or inferred.model, method or inferred.method, inferred.step if step is None else step)
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


def _assemble(sinks: list[Sink], warnings: list[IngestWarning], files: list[list[Path]]) -> IngestResult:
    summary = [{k: v for k, v in row.items() if k != "_stored"} for sink in sinks for row in sink.summary.values()]
    frame = typed_frame(summary, SUMMARY_COLUMNS)
    frame = frame.sort_values(["model", "method", "step"], na_position="last", kind="stable").reset_index(drop=True)
    return IngestResult(
        summary=frame,
        items=typed_frame([row for sink in sinks for row in sink.items], ITEM_COLUMNS),
        texts=typed_frame([row for sink in sinks for row in sink.texts], TEXT_COLUMNS),
        warnings=[*warnings, *(warning for sink in sinks for warning in sink.warnings)],
        files=[str(path) for group in files for path in group if _classify(path)[0] != "lmeval_samples"],
    )
