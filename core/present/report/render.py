"""A Report as one HTML document that opens offline: plotly.js inlined once, each chart's JSON in its own
`application/json` script element, every other string through `html.escape`."""

from __future__ import annotations

import html
import math
import numbers
import re
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from core.present.figures.layers import hidden_knowledge_reading
from core.present.highlight import default_scale, legend_html, token_html
from core.present.names import public_path, scrub_paths
from core.present.report.checkpoints import heading
from core.present.report.layout import metric_tables_html, summary_html
from core.present.report.parts import Chart, Table, frame_to_csv

if TYPE_CHECKING:
    from core.present.report.model import Report

_BULLET = re.compile(r"^\s*[-*]\s+")
PAIR_FIELDS = {
    "device": "device",
    "dtype": "dtype",
    "parameter_mb": "weights (MB)",
    "shares_backbone": "one shared backbone",
}

CSS = """
:root { --ink: #1d1d1f; --muted: #666; --line: #ddd; --ref: #f3f6ee; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-variant-ligatures: none;
       color: var(--ink);
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
.summary { background: #f5f8fc; border-left: 4px solid #1f77b4; padding: 4px 16px; }
.summary li { margin: 4px 0; }
table.metrics th.metric { font-weight: normal; max-width: 22em; }
th, td { overflow-wrap: anywhere; }
table.metrics th small, table.metrics th.run small { color: var(--muted); font-weight: normal; }
th.reference, td.reference { background: var(--ref); font-style: italic; }
.footnotes { color: var(--muted); font-size: 0.8em; columns: 2; }
.chart-static svg { max-width: 100%; height: auto; }
.chart-static { margin: 8px 0; break-inside: avoid; page-break-inside: avoid; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav, .downloads, .modebar-container { display: none !important; }
  .table-wrap { overflow: visible; }
  .chart, .probe, table { break-inside: avoid; page-break-inside: avoid; }
  h2 { break-after: avoid; page-break-after: avoid; }
  section + section { break-before: page; page-break-before: always; }
  section#section-notes { break-before: auto; page-break-before: auto; }
  td, th { padding: 2px 5px; }
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
    "summary": "Summary",
    "notes": "Notes",
    "pair": "Model pair",
    "tradeoffs": "Forget / utility tradeoff",
    "metrics": "Metrics",
    "robustness": "Robustness",
    "probes": "Probes",
    "attribution": "Attribution",
    "layers": "Layer view",
    "checkpoints": "Checkpoints",
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


ChartSvg = Callable[[Chart], str]  # a chart as an SVG document (for print: no scripts, vectors in the PDF)


class _Renderer:
    """Turns a Report into one HTML document; figure JSON is numbered in document order. With `svg`, every chart
    is drawn in the document as that SVG instead (the print version: no plotly.js, no scripts)."""

    def __init__(self, report: Report, svg: ChartSvg | None = None) -> None:
        self.report = report
        self.svg = svg
        self.figures: list[str] = []

    def chart(self, chart: Chart) -> str:
        if self.svg is not None:
            label = html.escape(chart.title, quote=True)
            return f'<figure class="chart-static" aria-label="{label}">{self.svg(chart)}</figure>'
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

    def summary_section(self) -> str:
        caption = '<p class="caption">Generated from the numbers in this report.</p>'
        return self.section("summary", f'<div class="summary">{summary_html(self.report.summary())}{caption}</div>')

    def pair_section(self) -> str:
        info, labels = self.report.pair or {}, self.report.labels
        names = [("base model", labels.side("base")), ("unlearned model", labels.side("unlearned"))]
        rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(name)}</td></tr>" for label, name in names)
        rows += "".join(
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
            '<p class="caption">One column per run at its last evaluation; shaded columns are references (target, '
            "base, oracle), not unlearning runs. Hover a metric for its raw key; the footnotes list them.</p>"
        )
        body = metric_tables_html(table.frame, self.report.labels)
        return self.section("metrics", caption + body + self.csv_link(table))

    def robustness_section(self) -> str:
        result = self.report.robustness
        caption = (
            f'<p class="caption">Each attack tries to bring the forgotten answers back on {result.n_items} forget '
            "items: recovery is the share of the forget probability the unlearned model lost that comes back "
            "(0 % = stays forgotten, 100 % = back to the base). Clean forget probability: base "
            f"{result.base:.3f}, unlearned {result.unlearned:.3f}.</p>"
        )
        charts = "".join(self.chart(chart) for chart in self.report.robustness_charts())
        table = self.report.robustness_table()
        return self.section("robustness", caption + charts + (self.table(table) if table is not None else ""))

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

    def checkpoints_section(self) -> str:
        caption = (
            '<p class="caption">One question under many models at once: the answer\'s log-prob (sum over its tokens) '
            "at every checkpoint of each unlearning run, with the base and the single models (target, oracle) as "
            "reference lines; the per-token Δ log-prob against the base (blue: more likely, red: less); and, where "
            "the logit lens ran, the answer's mean rank by layer and checkpoint (when it stopped ranking high, and "
            "from which depth on).</p>"
        )
        parts = []
        for i, view in enumerate(self.report.checkpoints):
            charts = {chart.name: chart for chart in self.report.checkpoints_charts_of(i)}
            table, tokens = self.report.checkpoints_tables_of(i)
            prefix = f"checkpoints-{i + 1}"
            body = [
                _qa_heading(f"Checkpoints {i + 1}", view.prompt, view.answer),
                f'<p class="caption">{heading(view)}</p>',
                self.chart(charts[f"{prefix}-trajectory"]),
                self.table(table),
                self.chart(charts[f"{prefix}-token-shift"]) + self.csv_link(tokens),
            ]  # in document order: the charts are numbered as they are drawn
            for k, (_, reading) in enumerate(view.lens_readings()):
                body.append(f"<p>{html.escape(reading)}</p>{self.chart(charts[f'{prefix}-lens-{k + 1}'])}")
            parts.append(f'<div class="probe" id="{prefix}">{"".join(body)}</div>')
        return self.section("checkpoints", caption + "".join(parts))

    def appendix_section(self) -> str:
        report = self.report
        sources = "".join(f"<li>{html.escape(public_path(source))}</li>" for source in report.sources)
        parts = [f"<p>Result folders:</p><ul>{sources}</ul>" if sources else ""]
        if report.warnings:
            items = "".join(f"<li>{html.escape(scrub_paths(warning))}</li>" for warning in report.warnings)
            parts.append(f'<div class="warnings"><p>Warnings:</p><ul>{items}</ul></div>')
        return self.section("appendix", "".join(parts)) if any(parts) else ""

    def body(self) -> str:
        report = self.report
        metrics, tradeoffs = report.metrics_table(), report.tradeoff_charts()
        sections = [
            self.summary_section(),
            self.section("notes", f'<div class="notes">{notes_html(report.notes)}</div>')
            if report.notes.strip()
            else "",
            self.pair_section() if report.pair else "",
            self.tradeoff_section(tradeoffs) if tradeoffs else "",
            self.metrics_section(metrics) if metrics is not None else "",
            self.robustness_section() if report.robustness is not None else "",
            self.probes_section() if report.probes else "",
            self.attribution_section() if report.attributions else "",
            self.layers_section() if report.lenses else "",
            self.checkpoints_section() if report.checkpoints else "",
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


def render_document(report: Report, svg: ChartSvg | None = None) -> str:
    """The whole report as one HTML document; with `svg`, the print version (each chart as that SVG)."""
    return _Renderer(report, svg).document()
