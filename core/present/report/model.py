"""What a report shows, as domain objects (Report), and how it is computed from a pair, result folders and probes."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.analyses.attribution import AttributionResult, attribute
from core.analyses.lens import LensResult, logit_lens
from core.analyses.probe import ProbeRequest, ProbeResult, score
from core.attacks.runner import RobustnessResult
from core.common.cache import atomic_write_text
from core.common.errors import UserError
from core.evaluation.ingest import IngestResult
from core.evaluation.results import FQ_MU, default_axes, has_points, metric_options
from core.models.pair import ModelPair
from core.present.figures.attribution import attribution_heatmap, attribution_matrix_figure
from core.present.figures.common import esc
from core.present.figures.layers import logit_lens_figure
from core.present.figures.probe import token_shift_figure
from core.present.figures.robustness import recovery_figure, relearning_figure, robustness_frame
from core.present.figures.tradeoffs import tradeoff_figure
from core.present.names import metric_label, metric_name
from core.present.report.checkpoints import CheckpointsView
from core.present.report.labels import SIDES, Labels
from core.present.report.parts import Chart, Table, metric_table, table_metrics
from core.present.report.render import render_document
from core.present.report.summary import Summary, summarise

log = logging.getLogger(__name__)


@dataclass
class Report:
    """Everything a report shows, as domain objects; charts and tables are built from them on demand."""

    title: str = "Unlearning report"
    pair: dict[str, Any] | None = None  # device, dtype, size: never the specs (they may be local paths)
    labels: Labels = field(default_factory=Labels)
    results: IngestResult | None = None
    axes: tuple[str, str] | None = None
    sources: list[str] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    attributions: list[AttributionResult] = field(default_factory=list)
    lenses: list[LensResult] = field(default_factory=list)
    robustness: RobustnessResult | None = None
    checkpoints: list[CheckpointsView] = field(default_factory=list)  # one prompt across many models, each
    notes: str = ""
    warnings: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))

    # ------------------------------------------------------------------ charts and tables

    def tradeoff_charts(self) -> list[Chart]:
        """The chart's axes against each other, and forget quality against model utility, with runs by their
        labels and axes by their display names (unit and direction)."""
        if self.results is None or self.axes is None:
            return []
        summary = self.labels.relabel(self.results.summary)
        pairs = [self.axes] + ([FQ_MU] if set(self.axes) != set(FQ_MU) and has_points(summary, *FQ_MU) else [])
        charts = []
        for i, (x, y) in enumerate(pairs):
            title = f"{metric_name(y).name} vs {metric_name(x).name.lower()}"
            figure = tradeoff_figure(summary, x, y, log_y=i > 0, title=esc(title))
            figure.update_layout(xaxis_title=esc(metric_label(x)), yaxis_title=esc(metric_label(y)))
            charts.append(Chart("tradeoff" if i == 0 else "forget-quality-vs-model-utility", title, figure))
        return charts

    def robustness_charts(self) -> list[Chart]:
        """Recovery % per attack, and the relearning curve when the relearn attack ran."""
        if self.robustness is None:
            return []
        charts = [Chart("robustness-recovery", "Recovery of forgotten answers by attack",
                        recovery_figure(self.robustness))]  # fmt: skip
        if self.robustness.relearning():
            charts.append(Chart("robustness-relearning", "Relearning curve", relearning_figure(self.robustness)))
        return charts

    def probe_charts(self) -> list[Chart]:
        return [
            Chart(f"probe-{i + 1}-token-shift", f"Probe {i + 1}: per-token shift", token_shift_figure(probe))
            for i, probe in enumerate(self.probes)
        ]

    def attribution_charts_of(self, i: int) -> list[Chart]:
        """The i-th attribution: the heatmap over prompt tokens, plus Δ per answer token when there are rows."""
        result, name = self.attributions[i], f"attribution-{i + 1}"
        charts = [Chart(name, f"Attribution {i + 1} ({result.method})", attribution_heatmap(result))]
        if len(result.answer_tokens) > 1:
            figure = attribution_matrix_figure(result, "delta")
            charts.append(Chart(f"{name}-delta-matrix", f"Attribution {i + 1}: Δ per answer token", figure))
        return charts

    def attribution_charts(self) -> list[Chart]:
        return [chart for i in range(len(self.attributions)) for chart in self.attribution_charts_of(i)]

    def lens_charts(self) -> list[Chart]:
        return [
            Chart(f"layers-{i + 1}", f"Layer view {i + 1}: logit lens", logit_lens_figure(lens))
            for i, lens in enumerate(self.lenses)
        ]

    def checkpoints_charts_of(self, i: int) -> list[Chart]:
        """The i-th checkpoints view: trajectory, token × model map, lens map per run."""
        return self.checkpoints[i].charts(f"checkpoints-{i + 1}")

    def checkpoints_charts(self) -> list[Chart]:
        return [chart for i in range(len(self.checkpoints)) for chart in self.checkpoints_charts_of(i)]

    def checkpoints_tables_of(self, i: int) -> list[Table]:
        """The i-th checkpoints view's tables: every model's answer log-prob, and the per-token Δ."""
        view = self.checkpoints[i]
        return [view.table(f"checkpoints-{i + 1}"), view.token_table(f"checkpoints-{i + 1}-tokens")]

    def charts(self) -> list[Chart]:
        """Every chart, in report order (the exports offer these)."""
        return [
            *self.tradeoff_charts(), *self.robustness_charts(), *self.probe_charts(), *self.attribution_charts(),
            *self.lens_charts(), *self.checkpoints_charts(),
        ]  # fmt: skip

    def metrics_table(self) -> Table | None:
        if self.results is None or self.axes is None:
            return None
        frame = metric_table(self.results.summary, table_metrics(self.results.summary, self.axes))
        return Table("metrics", "Metrics (last evaluation of each run)", frame, frame["reference"].tolist())

    def robustness_table(self) -> Table | None:
        if self.robustness is None:
            return None
        return Table("robustness", "Robustness: recovery by attack", robustness_frame(self.robustness))

    def summary(self) -> Summary:
        """The generated summary: closest run to the oracle, what it forgot and kept, attacks, caveats."""
        table = self.metrics_table()
        return summarise(
            table.frame if table is not None else None, self.labels, axes=self.axes,
            summary=self.results.summary if self.results is not None else None, robustness=self.robustness,
            probes=self.probes, items=self.results.items if self.results is not None else None,
            checkpoints=self.checkpoints,
        )  # fmt: skip

    def probe_table(self) -> Table | None:
        if not self.probes:
            return None
        rows = [
            {
                "probe": i + 1,
                "prompt": probe.prompt,
                "answer": probe.answer or "",
                "scored tokens": len(probe.tokens),
                "logprob base": probe.answer_logprob_base,
                "logprob unlearned": probe.answer_logprob_unlearned,
                "delta": probe.delta,
            }
            for i, probe in enumerate(self.probes)
        ]
        return Table("probes", "Probes: answer log-prob under both models", pd.DataFrame(rows))

    def lens_table(self) -> Table | None:
        if not self.lenses:
            return None
        rows = [
            {"probe": i + 1, "answer": lens.answer, **vars(knowledge)}
            for i, lens in enumerate(self.lenses)
            for knowledge in lens.hidden_knowledge().values()
        ]
        return Table("hidden-knowledge", "Hidden knowledge: the answer inside the layers", pd.DataFrame(rows))

    def tables(self) -> list[Table]:
        """Every table (each downloadable as CSV), in report order."""
        found = [self.metrics_table(), self.robustness_table(), self.probe_table(), self.lens_table()]
        token_tables = [
            Table(f"probe-{i + 1}-tokens", f"Probe {i + 1}: tokens", probe.to_frame())
            for i, probe in enumerate(self.probes)
        ]
        views = [table for i in range(len(self.checkpoints)) for table in self.checkpoints_tables_of(i)]
        return [table for table in found if table is not None] + token_tables + views

    # ------------------------------------------------------------------ output

    def render_html(self) -> str:
        """The whole report as one HTML document that opens offline."""
        return render_document(self)

    def write(self, path: Path | str) -> Path:
        """Write the HTML atomically (a reader never sees half a report)."""
        path = Path(path)
        atomic_write_text(path, self.render_html())
        return path

    def render_pdf(self) -> bytes:
        """The same report as PDF (core.present.report.pdf: printed by the system Chromium)."""
        from core.present.report.pdf import report_pdf

        return report_pdf(self)


# ---------------------------------------------------------------------------------------------- building


Progress = Callable[[str, float], None]


def build_report(
    pair: ModelPair | None,
    *,
    results: IngestResult | None = None,
    x_metric: str | None = None,
    y_metric: str | None = None,
    sources: Sequence[str] = (),
    probes: Sequence[ProbeRequest] = (),
    chat: bool = False,
    with_attribution: bool = False,
    attribution_method: str = "integrated_gradients",
    with_lens: bool = False,
    robustness: RobustnessResult | None = None,
    checkpoints: Sequence[CheckpointsView] = (),
    labels: Mapping[str, str] | None = None,
    notes: str = "",
    title: str = "Unlearning report",
    progress: Progress | None = None,
) -> Report:
    """Compute what the report shows: probes scored under the pair, attribution and the logit lens per probe.

    `labels` name the pair's sides (`base`, `unlearned`: the specs as the user typed them) and runs of the
    results (by run name); a side without one is called by its spec cut to its last path component. Attribution
    and the lens need a reference answer; probes without one are listed in the report's warnings.
    `checkpoints` are Checkpoints views computed beforehand (core.present.report.checkpoints.checkpoints_view:
    they need a set of models, not the pair). `progress(message, fraction)` is called before each step.
    """
    if results is None and not probes and robustness is None and not checkpoints:
        raise UserError(
            "nothing to report: give result folders, probes, a robustness result, a checkpoints view, or several"
        )
    if probes and pair is None:
        raise UserError("probes need a model pair: load one first")
    report = _start_report(pair, results, labels, x_metric, y_metric)
    report.title, report.notes, report.sources = title.strip() or Report.title, notes, list(sources)
    report.robustness, report.checkpoints = robustness, list(checkpoints)
    say = progress or (lambda message, fraction: log.info("%s", message))
    with_answers = [probe for probe in probes if probe.answer]
    steps = 1 + (len(with_answers) if with_attribution else 0) + (len(with_answers) if with_lens else 0)
    done = 0
    if probes:
        say(f"scoring {len(probes)} probe(s) under both models", 0.0)
        report.probes = score(pair, list(probes), chat=chat)
    done += 1
    skipped = [probe.prompt for probe in probes if not probe.answer]
    if skipped and (with_attribution or with_lens):
        report.warnings += [f"no answer given, so no attribution or layer view for: {prompt}" for prompt in skipped]
    for probe in with_answers if with_attribution else []:
        say(f"attributing {probe.prompt[:40]!r} ({attribution_method})", done / steps)
        report.attributions.append(attribute(pair, probe.prompt, probe.answer, attribution_method, chat))
        done += 1
    for probe in with_answers if with_lens else []:
        say(f"logit lens for {probe.prompt[:40]!r}", done / steps)
        report.lenses.append(logit_lens(pair, probe.prompt, probe.answer, chat))
        done += 1
    say("report ready", 1.0)
    return report


PAIR_PUBLIC = ("device", "dtype", "parameter_mb", "shares_backbone")  # what of pair.describe() a report shows


def _start_report(
    pair: ModelPair | None,
    results: IngestResult | None,
    labels: Mapping[str, str] | None,
    x_metric: str | None,
    y_metric: str | None,
) -> Report:
    """A report with the pair's public facts, the labels (checked against the runs) and the results' axes."""
    report = Report()
    given = dict(labels or {})
    if pair is not None:
        described = pair.describe()
        report.pair = {key: described[key] for key in PAIR_PUBLIC if key in described}
        for side in SIDES:
            given.setdefault(side, str(described[side]))
    runs = results.runs()[["model", "method"]].itertuples(index=False) if results is not None else ()
    report.labels = Labels(given, runs)
    if results is not None:
        report.results = results
        report.axes = _axes(results, x_metric, y_metric)
        report.warnings += [str(warning) for warning in results.warnings]
    return report


def _axes(results: IngestResult, x_metric: str | None, y_metric: str | None) -> tuple[str, str]:
    """The tradeoff chart's axes: those given, the rest by core.evaluation.results' preference; both must have
    points."""
    x_default, y_default = default_axes(metric_options(results.summary), results.summary)
    x, y = x_metric or x_default, y_metric or y_default
    if not has_points(results.summary, x, y):
        raise UserError(f"no run has values for both {x} and {y}; pick other metrics")
    return x, y
