"""The report's summary, generated from its own numbers: which run is closest to the oracle, what it forgot and
kept (with the figures as the metrics table shows them), what the attacks recover, and the caveats.

Every sentence is plain text built from the metrics table (each run's last evaluation), the tradeoff summary and a
robustness result; figures go through core.present.names.format_value, the formatter the table uses, so the summary
quotes exactly what the table shows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.evaluation.results import X_PREFERRED, Y_PREFERRED
from core.present.names import format_value, metric_name, scrub_paths
from core.present.report.labels import Labels

if TYPE_CHECKING:
    from core.analyses.probe import ProbeResult
    from core.attacks.runner import RobustnessResult
    from core.present.report.checkpoints import CheckpointsView

FQ = "forget_quality"
MU = "model_utility"
KS_LEVEL = 0.05  # forget quality is a KS p-value: below it the run is told apart from the oracle
MAX_OTHER_RUNS = 6  # one sentence each; the metrics table has every run
RECOVERY_HIGH = 50.0  # % of the forgotten probability back: the forgetting does not hold under that attack
KEPT_RELATIVE = 0.05  # utility within 5 % of the target's counts as kept
_RETAIN_SHARE = re.compile(r"retain[_-]?(\d{1,2})(?!\d)", re.IGNORECASE)


@dataclass
class Summary:
    """Findings and caveats as plain-text sentences; `best` is the model name of the run closest to the oracle."""

    findings: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    best: str | None = None


def _value(row: pd.Series, key: str | None) -> float | None:
    if key is None or key not in row.index or pd.isna(row[key]):
        return None
    return float(row[key])


def _lower(name: str) -> str:
    """A display name inside a sentence: "Forget quality" → "forget quality", "MMLU accuracy" unchanged."""
    return name[:1].lower() + name[1:] if name[1:2].islower() else name


def _first(frame: pd.DataFrame, method: str) -> pd.Series | None:
    rows = frame[frame["method"].eq(method)]
    return None if rows.empty else rows.iloc[0]


def pick_metrics(columns: list[str], axes: tuple[str, str] | None) -> tuple[str | None, str | None]:
    """The forget-set metric and the utility metric the summary speaks of (the chart's axes come first)."""
    forget_order = [name for name in [*(axes or ()), *X_PREFERRED] if name.startswith("forget_") and name != FQ]
    forget = next((name for name in forget_order if name in columns), None)
    utility = next((name for name in [*Y_PREFERRED, *(axes or ())] if name in columns and name != forget), None)
    return forget, utility


class _Writer:
    """Sentences about one metrics table; `fmt` quotes a value as the table shows it."""

    def __init__(self, table: pd.DataFrame, labels: Labels, axes: tuple[str, str] | None) -> None:
        self.table, self.labels = table, labels
        self.runs = table[~table["reference"].astype(bool)]
        self.target, self.oracle = _first(table, "target"), _first(table, "oracle")
        self.forget, self.utility = pick_metrics(list(table.columns), axes)

    @staticmethod
    def fmt(key: str, value: float | None) -> str:
        return format_value(key, value)

    def name(self, row: pd.Series) -> str:
        return self.labels.at_step(str(row["model"]), row["step"])

    def best(self) -> pd.Series | None:
        if FQ not in self.runs or self.runs[FQ].isna().all():
            return None
        return self.runs.loc[self.runs[FQ].astype(float).idxmax()]

    def closest(self, row: pd.Series) -> str:
        quality = _value(row, FQ)
        verdict = (
            "the test cannot tell it from the oracle"
            if quality is not None and quality >= KS_LEVEL
            else f"still distinguishable from the oracle (below {KS_LEVEL:g})"
        )
        return (
            f"{self.name(row)} is the run closest to the oracle: forget quality {self.fmt(FQ, quality)} "
            f"({verdict}; 1 would be the oracle itself)."
        )

    def forgot(self, row: pd.Series) -> str | None:
        key = self.forget
        value = _value(row, key)
        if key is None or value is None:
            return None
        words = _lower(metric_name(key).name)
        start = _value(self.target, key) if self.target is not None else None
        oracle = _value(self.oracle, key) if self.oracle is not None else None
        if start is not None:
            moved = f"went from {self.fmt(key, start)} (target, before unlearning) to {self.fmt(key, value)}"
        else:
            moved = f"is {self.fmt(key, value)} (no target among the results to compare with)"
        against = (
            f"; the oracle, never trained on the forget set, has {self.fmt(key, oracle)}" if oracle is not None else ""
        )
        return f"It forgot: {words} {moved}{against}.{self.over_forgets(row)}"

    def over_forgets(self, row: pd.Series) -> str:
        key = self.forget
        value, oracle = _value(row, key), _value(self.oracle, key) if self.oracle is not None else None
        if key is None or value is None or oracle is None or metric_name(key).direction != "lower = more forgotten":
            return ""
        return " That is below the oracle: it over-forgets." if value < oracle * 0.5 else ""

    def kept(self, row: pd.Series) -> str | None:
        key = self.utility
        value = _value(row, key)
        if key is None or value is None:
            return None
        words = _lower(metric_name(key).name)
        start = _value(self.target, key) if self.target is not None else None
        if start is None:
            return f"It has {words} {self.fmt(key, value)}."
        change = (value - start) / abs(start) if start else math.inf
        verb = "It kept its utility" if change >= -KEPT_RELATIVE else "It lost utility"
        return f"{verb}: {words} went from {self.fmt(key, start)} (target) to {self.fmt(key, value)}."

    def other(self, row: pd.Series) -> str:
        keys = [key for key in (FQ, self.forget, self.utility) if key is not None and _value(row, key) is not None]
        parts = [f"{_lower(metric_name(key).name)} {self.fmt(key, _value(row, key))}" for key in keys]
        text = f"{self.name(row)}: " + ("; ".join(parts) if parts else "no headline metric") + "."
        return text + self.over_forgets(row)


def forget_items(items: pd.DataFrame | None, model: str | None) -> int:
    """How many forget items the run's truth ratios (and so its forget quality) rest on; 0 when not recorded."""
    if items is None or model is None or items.empty or "index" not in items:
        return 0
    rows = items[items["metric"].eq("forget_truth_ratio") & items["model"].eq(model)]
    return int(rows["index"].nunique())


def _oracle_caveat(writer: _Writer, n_items: int = 0) -> str | None:
    if writer.oracle is None:
        if FQ in writer.table:
            return "Forget quality compares against an oracle whose own row is not among these results."
        return (
            "No oracle was given, so forget quality is undefined and no run can be compared with a model that never "
            "saw the forget set (give the oracle's results with --oracle)."
        )
    name = writer.labels.run(str(writer.oracle["model"]))
    share = _RETAIN_SHARE.search(str(writer.oracle["model"]))
    trained = f"retrained on {share.group(1)} % of the data (without the forget set)" if share else (
        "retrained without the forget set")  # fmt: skip
    on = f" on {n_items} forget items" if n_items else ""
    return (
        f"Forget quality compares each run's forget-set truth ratios against an oracle {trained}, {name}: "
        f"a KS-test p-value{on}, not a distance; small forget sets make it coarse."
    )


def _checkpoint_caveat(writer: _Writer, summary: pd.DataFrame, best: pd.Series | None) -> str | None:
    """When an earlier checkpoint scores a higher forget quality than any run's last evaluation, say which."""
    rows = summary[summary["metric"].eq(FQ) & ~summary["model"].isin(writer.table[writer.table["reference"]]["model"])]
    rows = rows.dropna(subset=["value"])
    if rows.empty or best is None:
        return None
    top = rows.loc[rows["value"].astype(float).idxmax()]
    if float(top["value"]) <= float(best[FQ]):
        return "Figures are each run's last evaluation; no earlier checkpoint has a higher forget quality."
    return (
        "Figures are each run's last evaluation; an earlier checkpoint, "
        f"{writer.labels.at_step(str(top['model']), top['step'])}, "
        f"has a higher forget quality ({format_value(FQ, top['value'])})."
    )


def _robustness_lines(result: RobustnessResult | None) -> tuple[list[str], list[str]]:
    if result is None:
        return [], ["No robustness result is included: whether the forgotten answers come back under attack is not "
                    "shown here (add one with --robustness)."]  # fmt: skip
    measured = [o for o in result.headlines() if o.recovery_pct is not None]
    missing = [o.attack for o in result.headlines() if o.recovery_pct is None]
    if not measured:
        return ["No attack could be measured in the robustness result."], []
    ranked = sorted(measured, key=lambda o: -o.recovery_pct)
    listing = ", ".join(f"{o.attack} {o.recovery_pct:.1f} %" for o in ranked)
    top = ranked[0]
    verdict = (
        f"the forgetting does not hold under {top.attack}"
        if top.recovery_pct >= RECOVERY_HIGH
        else "no attack brings back half of it"
    )
    finding = (
        f"Under attack, {top.attack} brings back the most: {top.recovery_pct:.1f} % of the forgotten answer "
        f"probability ({verdict}). All attacks: {listing} (0 % = stays forgotten, 100 % = back to the base)."
    )
    pair = result.pair or {}
    caveats = [
        f"The attacks ran on {result.n_items} forget items of one pair ({scrub_paths(str(pair.get('base', 'base')))} → "
        f"{scrub_paths(str(pair.get('unlearned', 'unlearned')))}), which need not be the runs in the table."
    ]
    if missing:
        caveats.append(f"Not measured: {', '.join(missing)} (the robustness section says why).")
    return [finding], caveats


def _probe_line(probes: list[ProbeResult]) -> str | None:
    if not probes:
        return None
    deltas = np.array([probe.delta for probe in probes], dtype=float)
    if len(deltas) == 1:
        return f"On the probe, the unlearned model's answer log-probability changed by {deltas[0]:+.3f}."
    return (
        f"On the {len(probes)} probes, the unlearned model's answer log-probability changed by "
        f"{deltas.mean():+.3f} on average (from {deltas.min():+.3f} to {deltas.max():+.3f})."
    )


def _checkpoints_line(view: CheckpointsView, number: int) -> str:
    """The answer's log-probability under the base, at each run's last checkpoint (with Δ) and under each single
    model, as the checkpoints table shows them."""
    values = view.probe.answer_logprobs()
    last: dict[str, tuple[int, int]] = {}
    for i, (run, step) in enumerate(zip(view.runs, view.steps, strict=True)):
        if run is not None and step is not None and (run not in last or step >= last[run][0]):
            last[run] = (step, i)
    parts = [
        f"{run} at its last checkpoint (step {step}) {values[i]:.3f} (Δ {view.probe.results[i].delta:+.3f})"
        for run, (step, i) in last.items()
    ]
    parts += [f"{view.probe.models[i]} {values[i]:.3f}" for i, run in enumerate(view.runs) if run is None]
    base = view.probe.results[0].answer_logprob_base
    return (
        f"Checkpoints {number}: the answer's log-probability is {base:.3f} under the base {view.base}; "
        f"{'; '.join(parts)}."
    )


def summarise(
    table: pd.DataFrame | None,
    labels: Labels,
    *,
    axes: tuple[str, str] | None = None,
    summary: pd.DataFrame | None = None,
    robustness: RobustnessResult | None = None,
    probes: list[ProbeResult] | None = None,
    items: pd.DataFrame | None = None,
    checkpoints: list[CheckpointsView] | None = None,
) -> Summary:
    """The summary of a report from its metrics table (`metric_table`'s frame), results and robustness."""
    out = Summary()
    if table is not None and not table.empty:
        writer = _Writer(table, labels, axes)
        best = writer.best()
        lead = best if best is not None else (writer.runs.iloc[0] if len(writer.runs) == 1 else None)
        if best is not None:
            out.best = str(best["model"])
            out.findings.append(writer.closest(best))
        if lead is not None:
            out.findings += [line for line in (writer.forgot(lead), writer.kept(lead)) if line]
        if writer.runs.empty:
            references = ", ".join(labels.run(str(model)) for model in table["model"])
            out.findings.append(f"The results hold references only ({references}): no unlearning run to summarise.")
        others = [row for _, row in writer.runs.iterrows() if lead is None or row["model"] != lead["model"]]
        out.findings += [writer.other(row) for row in others[:MAX_OTHER_RUNS]]
        if len(others) > MAX_OTHER_RUNS:
            out.findings.append(f"{len(others) - MAX_OTHER_RUNS} more run(s) are in the metrics table.")
        out.caveats += [line for line in (_oracle_caveat(writer, forget_items(items, out.best)),) if line]
        if summary is not None:
            out.caveats += [line for line in (_checkpoint_caveat(writer, summary, best),) if line]
    findings, caveats = _robustness_lines(robustness)
    out.findings += findings
    probe_line = _probe_line(probes or [])
    out.findings += [probe_line] if probe_line else []
    out.findings += [_checkpoints_line(view, i + 1) for i, view in enumerate(checkpoints or [])]
    out.caveats += caveats
    return out
