"""The Screen table: many models × the metrics of one data set, read from ingested result folders
(core.evaluation.ingest's summary: model, method, step, split, metric, value, source). One row per run at its last
checkpoint (or per checkpoint), each with the trajectory of a metric across the run's steps for a sparkline, and,
where the results say which model produced them, the model spec that loads it (to contrast two rows)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from core.common.cache import cache_home
from core.common.errors import UserError
from core.evaluation.results import X_PREFERRED, Y_PREFERRED

_BENCHMARK_FILE = re.compile(r"^(?P<name>\w+?)_(EVAL|SUMMARY)$")
UTILITY = ("model_utility", "model_utility_partial")
RETAIN = tuple(name for name in Y_PREFERRED if name not in UTILITY)
KEY = ["model", "method", "step"]


def dataset_of(source: str) -> str:
    """The data set a result file is about: its benchmark (TOFU_EVAL.json → TOFU), else its folder's name."""
    path = Path(str(source))
    match = _BENCHMARK_FILE.match(path.stem)
    return match["name"] if match else path.parent.name or path.stem


def datasets(summary: pd.DataFrame) -> list[str]:
    """The data sets in a summary, the one with most rows first."""
    if summary.empty:
        return []
    counts = summary["source"].map(dataset_of).value_counts()
    return sorted(counts.index, key=lambda name: (-counts[name], name))


def dataset_rows(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return summary[summary["source"].map(dataset_of) == dataset]


def default_metrics(metrics: Sequence[str]) -> list[str]:
    """Forget, retain, utility, forget quality and any robustness recovery the results carry, where present."""
    have = set(metrics)
    picks = [next((m for m in group if m in have), None) for group in (X_PREFERRED, RETAIN, UTILITY)]
    picks += ["forget_quality"] if "forget_quality" in have else []
    picks += [m for m in metrics if "recovery" in m.lower()]
    return list(dict.fromkeys(m for m in picks if m))


def screen_table(rows: pd.DataFrame, metrics: Sequence[str], trend: str | None, every_step: bool) -> pd.DataFrame:
    """One row per run (its last checkpoint; every checkpoint with `every_step`): model, method, step, `metrics`,
    `trend` across the run's steps as a list (the sparkline), the number of checkpoints and the result file."""
    if rows.empty:
        raise UserError("no results for this data set")
    wide = rows.pivot_table(index=KEY, columns="metric", values="value", aggfunc="first", dropna=False)
    wide = wide.reset_index().dropna(subset=[m for m in metrics if m in wide.columns], how="all")
    sources = rows.drop_duplicates(KEY).set_index(KEY)["source"]
    out = []
    for (model, method), run in wide.groupby(["model", "method"], sort=False, dropna=False):
        run = run.sort_values("step", na_position="first")
        trajectory = [float(v) for v in run[trend]] if trend in run else []
        trajectory = [v for v in trajectory if not math.isnan(v)]
        for _, row in (run if every_step else run.tail(1)).iterrows():
            step = None if pd.isna(row["step"]) else int(row["step"])
            record = {"model": model, "method": method, "step": step}
            record.update({m: (float(row[m]) if m in row and not pd.isna(row[m]) else None) for m in metrics})
            record["trajectory"] = trajectory
            record["checkpoints"] = len(run)
            record["source"] = str(sources.get((model, method, row["step"]), ""))
            out.append(record)
    return pd.DataFrame(out, columns=[*KEY, *metrics, "trajectory", "checkpoints", "source"])


def row_spec(model: str, step: int | None, source: str) -> str | None:
    """The spec of the model a result row is about, where the results tell: the checkpoint or model folder the
    result file sits in (open-unlearning's run/checkpoint-N/evals/), or a demo model for the demo's own evaluation
    (cache home's demo/<recipe>/evaluations/). None when the results do not say where the model is."""
    path = Path(source)
    for folder in list(path.parents)[:3]:
        if (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
            return str(folder)
    from core.unlearn.demo import default_recipe

    demo = cache_home() / "demo" / default_recipe().name / "evaluations"
    if demo in path.parents and re.fullmatch(r"[a-z_]+", model or ""):
        return f"demo:{model}" + (f"@{step}" if step is not None else "")
    return None
