"""Reports for people who were not in the room: one self-contained HTML file, chart images and CSV tables.

The HTML holds plotly.js once (inlined, so it opens offline) and every chart as JSON drawn by `Plotly.newPlot`;
the charts are the dashboard's own (core.present.figures, core.present.figures_views). Every model- or user-produced
string is
escaped: figure JSON sits in `application/json` script elements with `<`, `>` and `&` written as JSON escapes,
and all other text goes through `html.escape`. Chart images come from kaleido driving the system Chromium; one
warm export browser serves the whole process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import html
import json
import logging
import math
import numbers
import os
import re
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from core.analyses.attribution import AttributionResult, attribute
from core.analyses.lens import LensResult, logit_lens
from core.analyses.probe import ProbeRequest, ProbeResult, score
from core.common.cache import atomic_write_bytes, atomic_write_text
from core.common.errors import UserError
from core.evaluation.ingest import REFERENCE_METHODS, IngestResult
from core.evaluation.results import FQ_MU, X_PREFERRED, Y_PREFERRED, default_axes, has_points, metric_options
from core.models.pair import ModelPair
from core.present.figures import forget_quality_utility_figure, token_shift_figure, tradeoff_figure
from core.present.figures_views import (
    attribution_heatmap,
    attribution_matrix_figure,
    hidden_knowledge_reading,
    logit_lens_figure,
)
from core.present.highlight import default_scale, legend_html, token_html

log = logging.getLogger(__name__)

EXPORT_FORMATS = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
DEFAULT_SIZE = (900, 520)  # layout pixels of an exported chart without its own width/height
PNG_SCALE = 2  # PNGs at twice the layout size: sharp on slides
EXPORT_TIMEOUT_S = 120.0
MAX_TABLE_METRICS = 8
_SLUG = re.compile(r"[^A-Za-z0-9]+")
_BULLET = re.compile(r"^\s*[-*]\s+")
PAIR_FIELDS = {
    "base": "base model",
    "unlearned": "unlearned model",
    "device": "device",
    "dtype": "dtype",
    "parameter_mb": "weights (MB)",
    "shares_backbone": "one shared backbone",
}


# ---------------------------------------------------------------------------------------------- pieces


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


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything a report shows, as domain objects; charts and tables are built from them on demand."""

    title: str = "Unlearning report"
    pair: dict[str, Any] | None = None
    results: IngestResult | None = None
    axes: tuple[str, str] | None = None
    sources: list[str] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    attributions: list[AttributionResult] = field(default_factory=list)
    lenses: list[LensResult] = field(default_factory=list)
    notes: str = ""
    warnings: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))

    # ------------------------------------------------------------------ charts and tables

    def tradeoff_charts(self) -> list[Chart]:
        if self.results is None or self.axes is None:
            return []
        x, y = self.axes
        summary = self.results.summary
        charts = [Chart("tradeoff", f"{y} vs {x}", tradeoff_figure(summary, x, y))]
        if set(self.axes) != set(FQ_MU) and has_points(summary, *FQ_MU):
            figure = forget_quality_utility_figure(summary)
            charts.append(Chart("forget-quality-vs-model-utility", "Forget quality vs model utility", figure))
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

    def charts(self) -> list[Chart]:
        """Every chart, in report order (the exports offer these)."""
        return [*self.tradeoff_charts(), *self.probe_charts(), *self.attribution_charts(), *self.lens_charts()]

    def metrics_table(self) -> Table | None:
        if self.results is None or self.axes is None:
            return None
        frame = metric_table(self.results.summary, table_metrics(self.results.summary, self.axes))
        return Table("metrics", "Metrics (last evaluation of each run)", frame, frame["reference"].tolist())

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
        found = [self.metrics_table(), self.probe_table(), self.lens_table()]
        token_tables = [
            Table(f"probe-{i + 1}-tokens", f"Probe {i + 1}: tokens", probe.to_frame())
            for i, probe in enumerate(self.probes)
        ]
        return [table for table in found if table is not None] + token_tables

    # ------------------------------------------------------------------ output

    def render_html(self) -> str:
        """The whole report as one HTML document that opens offline."""
        return _Renderer(self).document()

    def write(self, path: Path | str) -> Path:
        """Write the HTML atomically (a reader never sees half a report)."""
        path = Path(path)
        atomic_write_text(path, self.render_html())
        return path


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
    notes: str = "",
    title: str = "Unlearning report",
    progress: Progress | None = None,
) -> Report:
    """Compute what the report shows: probes scored under the pair, attribution and the logit lens per probe.

    Attribution and the lens need a reference answer; probes without one are listed in the report's warnings.
    `progress(message, fraction)` is called before each step.
    """
    if results is None and not probes:
        raise UserError("nothing to report: give result folders, probes, or both")
    if probes and pair is None:
        raise UserError("probes need a model pair: load one first")
    say = progress or (lambda message, fraction: log.info("%s", message))
    with_answers = [probe for probe in probes if probe.answer]
    steps = 1 + (len(with_answers) if with_attribution else 0) + (len(with_answers) if with_lens else 0)
    done = 0
    report = Report(title=title.strip() or Report.title, notes=notes, sources=list(sources))
    if pair is not None:
        report.pair = pair.describe()
    if results is not None:
        report.results = results
        report.axes = _axes(results, x_metric, y_metric)
        report.warnings += [str(warning) for warning in results.warnings]
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


def _axes(results: IngestResult, x_metric: str | None, y_metric: str | None) -> tuple[str, str]:
    """The tradeoff chart's axes: those given, the rest by core.evaluation.results' preference; both must have
    points."""
    x_default, y_default = default_axes(metric_options(results.summary))
    x, y = x_metric or x_default, y_metric or y_default
    if not has_points(results.summary, x, y):
        raise UserError(f"no run has values for both {x} and {y}; pick other metrics")
    return x, y


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
:root { --ink: #1d1d1f; --muted: #666; --line: #ddd; --ref: #f3f6ee; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { margin-bottom: 0; } h2 { border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 2.2em; }
.meta, .caption { color: var(--muted); font-size: 0.9em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.88em; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.reference td { background: var(--ref); font-style: italic; }
.chart { width: 100%; margin: 8px 0 4px; }
.table-wrap { overflow-x: auto; max-width: 100%; }
.probe { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.probe .qa { white-space: pre-wrap; }
.notes { background: #fafafa; border-left: 4px solid #888; padding: 6px 16px; }
.downloads a { font-size: 0.85em; margin-right: 1em; }
.warnings { color: #8a4b00; }
@media print {
  body { max-width: none; padding: 0; font-size: 12px; }
  nav, .downloads, .modebar-container { display: none !important; }
  .table-wrap { overflow: visible; }
  .chart, .probe, table { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; page-break-after: avoid; }
}
"""

# Draws every chart from its JSON; stays in the page, so a reader of the file sees what runs.
LOADER = """
document.querySelectorAll("div.chart[data-figure]").forEach(function (div) {
  var spec = JSON.parse(document.getElementById(div.dataset.figure).textContent);
  var config = {responsive: true, displaylogo: false,
                toImageButtonOptions: {format: "png", filename: div.dataset.name, scale: 2}};
  Plotly.newPlot(div, spec.data || [], spec.layout || {}, config);
});
"""

SECTIONS = {
    "notes": "Notes",
    "pair": "Model pair",
    "tradeoffs": "Forget / utility tradeoff",
    "metrics": "Metrics",
    "probes": "Probes",
    "attribution": "Attribution",
    "layers": "Layer view",
    "appendix": "Inputs",
}


def _script_json(value: str) -> str:
    """JSON text safe inside a <script> element: no `<`, `>` or `&` survives to end it early."""
    return value.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _cell(value: Any) -> tuple[str, bool]:
    """Escaped text of a table cell and whether it is a number (right-aligned)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "", False
    if isinstance(value, bool | np.bool_):
        return ("yes" if value else ""), False
    if isinstance(value, numbers.Integral):
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        return html.escape(f"{float(value):.4g}"), True
    return html.escape(str(value)), False


def notes_html(text: str) -> str:
    """Plain text with a little markdown: `#` headings, `-`/`*` lists, blank-line paragraphs; everything escaped."""
    blocks = [block for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]
    parts = []
    for block in blocks:
        lines = [line.rstrip() for line in block.splitlines() if line.strip()]
        if all(_BULLET.match(line) for line in lines):
            items = "".join(f"<li>{html.escape(_BULLET.sub('', line))}</li>" for line in lines)
            parts.append(f"<ul>{items}</ul>")
        elif len(lines) == 1 and lines[0].startswith("#"):
            parts.append(f"<h3>{html.escape(lines[0].lstrip('#').strip())}</h3>")
        else:
            parts.append(f"<p>{'<br>'.join(html.escape(line) for line in lines)}</p>")
    return "".join(parts)


def _qa_heading(label: str, prompt: str, answer: str) -> str:
    return (
        f'<h3>{html.escape(label)}</h3><div class="qa"><b>prompt</b> {html.escape(prompt)}<br>'
        f"<b>answer</b> {html.escape(answer)}</div>"
    )


class _Renderer:
    """Turns a Report into one HTML document; figure JSON is numbered in document order."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.figures: list[str] = []

    def chart(self, chart: Chart) -> str:
        index = len(self.figures)
        self.figures.append(_script_json(pio.to_json(chart.figure, validate=False)))
        height = chart.figure.layout.height or 450
        return (
            f'<div class="chart" id="chart-{index}" data-figure="figure-{index}" '
            f'data-name="{html.escape(chart.name, quote=True)}" style="height:{int(height)}px" '
            f'aria-label="{html.escape(chart.title, quote=True)}"></div>'
        )

    def table(self, table: Table) -> str:
        header = "".join(f"<th>{html.escape(str(column))}</th>" for column in table.frame.columns)
        rows = []
        for i, values in enumerate(table.frame.itertuples(index=False)):
            cells = []
            for value in values:
                text, numeric = _cell(value)
                cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
            marked = table.reference is not None and table.reference[i]
            rows.append(f'<tr class="reference">{"".join(cells)}</tr>' if marked else f"<tr>{''.join(cells)}</tr>")
        return (
            f'<div class="table-wrap"><table id="table-{html.escape(table.name, quote=True)}"><thead><tr>{header}'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{self.csv_link(table)}"
        )

    @staticmethod
    def csv_link(table: Table) -> str:
        href = "data:text/csv;charset=utf-8," + urllib.parse.quote(frame_to_csv(table.frame))
        name = html.escape(f"{table.name}.csv", quote=True)
        return f'<div class="downloads"><a download="{name}" href="{html.escape(href, quote=True)}">CSV</a></div>'

    def section(self, key: str, body: str) -> str:
        return f'<section id="section-{key}"><h2>{html.escape(SECTIONS[key])}</h2>{body}</section>'

    # ------------------------------------------------------------------ sections

    def pair_section(self) -> str:
        info = self.report.pair or {}
        rows = "".join(
            f"<tr><th>{html.escape(label)}</th><td>{_cell(info[key])[0] or 'no'}</td></tr>"
            for key, label in PAIR_FIELDS.items()
            if key in info
        )
        return self.section("pair", f"<table>{rows}</table>")

    def tradeoff_section(self, tradeoffs: list[Chart]) -> str:
        charts = "".join(self.chart(chart) for chart in tradeoffs)
        caption = (
            '<p class="caption">Each line is one unlearning run through its checkpoints; the star is the target '
            "(before unlearning), the diamond the oracle (retrained without the forget set), the dotted red line "
            "the Pareto front.</p>"
        )
        return self.section("tradeoffs", caption + charts)

    def metrics_section(self, table: Table) -> str:
        caption = (
            '<p class="caption">Shaded rows are references (target, base, oracle), not unlearning runs. '
            "An empty step is the final evaluation.</p>"
        )
        return self.section("metrics", caption + self.table(table))

    def probes_section(self) -> str:
        report = self.report
        parts = [self.table(table) for table in [report.probe_table()] if table is not None]
        for i, (probe, chart) in enumerate(zip(report.probes, report.probe_charts(), strict=True)):
            scale = default_scale(probe, "delta")
            answer = f"<br><b>answer</b> {html.escape(probe.answer)}" if probe.answer else ""
            truncated = (
                '<p class="warnings">The prompt was truncated to fit the context.</p>' if probe.truncated else ""
            )
            tokens = Table(f"probe-{i + 1}-tokens", "", probe.to_frame())
            parts.append(
                f'<div class="probe" id="probe-{i + 1}"><h3>Probe {i + 1}</h3>'
                f'<div class="qa"><b>prompt</b> {html.escape(probe.prompt)}{answer}</div>'
                f"<p>Answer log-prob: base {probe.answer_logprob_base:.3f}, unlearned "
                f"{probe.answer_logprob_unlearned:.3f}, Δ {probe.delta:+.3f}</p>{truncated}"
                f"{legend_html('delta', scale)}{token_html(probe, 'delta', scale)}"
                f"{self.chart(chart)}{self.csv_link(tokens)}</div>"
            )
        return self.section("probes", "".join(parts))

    def attribution_section(self) -> str:
        caption = (
            '<p class="caption">How much each prompt token drives the answer\'s log-prob under each model, and the '
            "difference (unlearned − base).</p>"
        )
        parts = [
            _qa_heading(f"Attribution {i + 1}", result.prompt, result.answer)
            + "".join(self.chart(chart) for chart in self.report.attribution_charts_of(i))
            for i, result in enumerate(self.report.attributions)
        ]
        return self.section("attribution", caption + "".join(parts))

    def layers_section(self) -> str:
        caption = (
            '<p class="caption">The logit lens: the answer\'s rank and probability read out at every layer. An '
            "answer the unlearned model still ranks high in middle layers and drops only at the end is hidden, not "
            "forgotten.</p>"
        )
        parts = [
            _qa_heading(f"Layer view {i + 1}", lens.prompt, lens.answer)
            + f"<p>{html.escape(hidden_knowledge_reading(lens).text)}</p>{self.chart(chart)}"
            for i, (lens, chart) in enumerate(zip(self.report.lenses, self.report.lens_charts(), strict=True))
        ]
        table = self.report.lens_table()
        return self.section("layers", caption + "".join(parts) + (self.table(table) if table else ""))

    def appendix_section(self) -> str:
        report = self.report
        sources = "".join(f"<li>{html.escape(source)}</li>" for source in report.sources)
        parts = [f"<p>Result folders:</p><ul>{sources}</ul>" if sources else ""]
        if report.warnings:
            items = "".join(f"<li>{html.escape(warning)}</li>" for warning in report.warnings)
            parts.append(f'<div class="warnings"><p>Warnings:</p><ul>{items}</ul></div>')
        return self.section("appendix", "".join(parts)) if any(parts) else ""

    def body(self) -> str:
        report = self.report
        metrics, tradeoffs = report.metrics_table(), report.tradeoff_charts()
        sections = [
            self.section("notes", f'<div class="notes">{notes_html(report.notes)}</div>')
            if report.notes.strip()
            else "",
            self.pair_section() if report.pair else "",
            self.tradeoff_section(tradeoffs) if tradeoffs else "",
            self.metrics_section(metrics) if metrics is not None else "",
            self.probes_section() if report.probes else "",
            self.attribution_section() if report.attributions else "",
            self.layers_section() if report.lenses else "",
            self.appendix_section(),
        ]
        present = [key for key, text in zip(SECTIONS, sections, strict=True) if text]
        nav = "".join(f'<a href="#section-{key}">{html.escape(SECTIONS[key])}</a>' for key in present)
        head = (
            f"<header><h1>{html.escape(report.title)}</h1>"
            f'<p class="meta">Unlearning Lens · {html.escape(report.created)}</p><nav>{nav}</nav></header>'
        )
        return head + "".join(sections)

    def document(self) -> str:
        body = self.body()
        data = "".join(
            f'<script type="application/json" id="figure-{i}">{spec}</script>' for i, spec in enumerate(self.figures)
        )
        plotly = get_plotlyjs() if self.figures else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.report.title)}</title><style>{CSS}</style>"
            + (f'<script>window.PlotlyConfig = {{MathJaxConfig: "local"}};</script><script>{plotly}</script>'
               if plotly else "")
            + f"</head><body>{body}{data}"
            + (f"<script>{LOADER}</script>" if self.figures else "")
            + "</body></html>\n"
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- exports


def chromium_path() -> str | None:
    """The browser kaleido drives: `$BROWSER_PATH`, else a Chromium/Chrome on PATH, else Debian's path."""
    candidates = [os.environ.get("BROWSER_PATH")]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")]
    candidates.append("/usr/bin/chromium")
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def export_available() -> bool:
    return chromium_path() is not None


class _ExportServer:
    """One kaleido browser for the whole process, on its own event-loop thread; started on first use.

    Every render is a coroutine submitted to that loop, so calls from several threads (Streamlit sessions) are
    safe and each has a timeout; a failed render closes the browser so the next call starts a fresh one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kaleido: Any = None

    def _start(self) -> None:
        import kaleido

        browser = chromium_path()
        if browser is None:
            raise UserError("image export needs Chromium: install it (apt-get install chromium) or set BROWSER_PATH")
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="kaleido-export", daemon=True).start()

        async def open_browser() -> Any:
            instance = kaleido.Kaleido(path=browser, mathjax=False, timeout=EXPORT_TIMEOUT_S)
            await instance.__aenter__()
            return instance

        try:
            self._kaleido = asyncio.run_coroutine_threadsafe(open_browser(), loop).result(EXPORT_TIMEOUT_S)
        except Exception as exc:
            loop.call_soon_threadsafe(loop.stop)
            raise UserError(f"could not start Chromium for image export ({browser}): {exc}") from exc
        self._loop = loop
        log.info("export browser started: %s", browser)

    def render(self, spec: dict[str, Any], opts: dict[str, Any]) -> bytes:
        with self._lock:
            if self._loop is None:
                self._start()
            loop, instance = self._loop, self._kaleido
        future = asyncio.run_coroutine_threadsafe(instance.calc_fig(spec, opts=opts), loop)
        try:
            return future.result(EXPORT_TIMEOUT_S + 10)
        except Exception as exc:
            future.cancel()
            self.stop()
            raise UserError(f"image export failed: {type(exc).__name__}: {exc}") from exc

    def stop(self) -> None:
        with self._lock:
            loop, instance, self._loop, self._kaleido = self._loop, self._kaleido, None, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(instance.__aexit__(None, None, None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)

    @property
    def running(self) -> bool:
        return self._loop is not None


EXPORT_SERVER = _ExportServer()
atexit.register(EXPORT_SERVER.stop)


def figure_bytes(
    figure: go.Figure, format: str, *, width: int | None = None, height: int | None = None, scale: float | None = None
) -> bytes:
    """The chart as PNG, SVG or PDF bytes (rendered by the warm export browser)."""
    if format not in EXPORT_FORMATS:
        raise UserError(f"unknown image format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    spec = figure.to_plotly_json()
    layout = figure.layout
    opts = {
        "format": format,
        "width": width or layout.width or DEFAULT_SIZE[0],
        "height": height or layout.height or DEFAULT_SIZE[1],
        "scale": scale or (PNG_SCALE if format == "png" else 1),
    }
    return EXPORT_SERVER.render(json.loads(pio.to_json(spec, validate=False)), opts)


def export_figure(figure: go.Figure, path: Path | str, format: str | None = None) -> Path:
    """Write the chart to `path` as PNG / SVG / PDF (the format defaults to the file's suffix)."""
    path = Path(path)
    format = format or path.suffix.lstrip(".").lower()
    atomic_write_bytes(path, figure_bytes(figure, format))
    return path


def export_all(report: Report, folder: Path | str, formats: Sequence[str]) -> Iterator[Path]:
    """Every chart in each format and every table as CSV into `folder`; yields each file written."""
    folder = Path(folder)
    for chart in report.charts():
        for format in formats:
            yield export_figure(chart.figure, folder / f"{chart.name}.{format}", format)
    for table in report.tables():
        path = folder / f"{table.name}.csv"
        atomic_write_text(path, frame_to_csv(table.frame))
        yield path
