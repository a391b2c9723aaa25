"""The pieces of a report: charts and tables, the metrics table of result folders, probes parsed from text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from core.analyses.probe import ProbeRequest
from core.attacks.runner import RobustnessResult
from core.common.errors import UserError
from core.evaluation.ingest import REFERENCE_METHODS
from core.evaluation.results import FQ_MU, X_PREFERRED, Y_PREFERRED, metric_options

MAX_TABLE_METRICS = 8
_SLUG = re.compile(r"[^A-Za-z0-9]+")


@dataclass
class Chart:
    """One chart of the report: `name` is file-name safe and unique within the report; `title` is plain text."""

    name: str
    title: str
    figure: go.Figure


@dataclass
class Table:
    """One table of the report; rows where `reference` is True (target, oracle, base) are marked as references."""

    name: str
    title: str
    frame: pd.DataFrame
    reference: list[bool] | None = None


def slug(text: str) -> str:
    """A file-name-safe lowercase name: runs of other characters become one dash."""
    return _SLUG.sub("-", text).strip("-").lower() or "chart"


def parse_probe(text: str) -> ProbeRequest:
    """`prompt|answer` (the last `|` separates them) or a bare prompt; surrounding spaces are dropped."""
    prompt, bar, answer = text.rpartition("|") if "|" in text else (text, "", "")
    prompt, answer = prompt.strip(), answer.strip()
    if not prompt:
        raise UserError(f"probe {text!r} has no prompt; write it as 'prompt|answer'")
    return ProbeRequest(prompt, answer if bar and answer else None)


def parse_probes(text: str) -> list[ProbeRequest]:
    """One `prompt|answer` per line; blank lines are skipped."""
    return [parse_probe(line) for line in text.splitlines() if line.strip()]


def read_robustness(path: Path | str) -> RobustnessResult:
    """A robustness result as `python -m core robustness --out DIR` writes it: DIR/robustness.json or the file."""
    path = Path(path).expanduser()
    file = path / "robustness.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path.name}: no robustness.json there (write one with `python -m core robustness --out`)")
    return RobustnessResult.from_json(file.read_text(encoding="utf-8"))


def metric_table(summary: pd.DataFrame, metric_names: Sequence[str]) -> pd.DataFrame:
    """One row per run (its last evaluation: the final one, else the highest step) with the given metrics.

    Columns: model, method, step (empty = final), reference (target / base / oracle), then one per metric.
    References come first, then runs by name.
    """
    rows = summary[summary["metric"].isin(metric_names)]
    if rows.empty:
        raise UserError(f"no values for any of {', '.join(metric_names)}")
    wide = rows.groupby(["model", "method", "step", "metric"], dropna=False)["value"].first().unstack("metric")
    wide = wide.reset_index().sort_values(["model", "step"], na_position="last")
    last = wide.groupby("model", sort=False).tail(1).copy()
    last.insert(3, "reference", last["method"].isin(REFERENCE_METHODS))
    last = last.sort_values(["reference", "model"], ascending=[False, True], kind="stable")
    columns = ["model", "method", "step", "reference", *[name for name in metric_names if name in last]]
    return last[columns].reset_index(drop=True)


def table_metrics(summary: pd.DataFrame, axes: tuple[str, str]) -> list[str]:
    """The headline metrics for the table: the chart's axes, forget quality and model utility, then preferred ones."""
    options = metric_options(summary)
    wanted = [*axes, *reversed(FQ_MU), *X_PREFERRED, *Y_PREFERRED, *options]
    return list(dict.fromkeys(name for name in wanted if name in options))[:MAX_TABLE_METRICS]


def frame_to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV text (no index; missing values empty; floats with every digit)."""
    return frame.to_csv(index=False, lineterminator="\n")
