"""open-unlearning's EVAL/SUMMARY layout written back: from EVAL entries, or re-exported from one IngestResult."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.common.cache import atomic_write_text
from core.common.errors import UserError
from core.evaluation.tables import IngestResult, plain


def _json_ready(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN as null, keys as strings."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(element) for key, element in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_ready(element) for element in value]
    return plain(value)


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
            record[name] = plain(value)
        else:
            record.setdefault(name, []).append(plain(value))


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
            _node(logs, path)["agg_value"] = plain(row.value)
        else:
            parent[path[-1]] = plain(row.value)
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
