"""HTML blocks of a report that are laid out for reading rather than drawn from one frame: the generated summary and
the metrics table turned on its side (one row per metric, by its display name; one column per run), split into
parts that fit the page. Every string goes through `html.escape`."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import pandas as pd

from core.present.names import format_value, metric_name
from core.present.report.labels import Labels

if TYPE_CHECKING:
    from core.present.report.summary import Summary

MAX_RUN_COLUMNS = 6  # run columns per table part: with the metric's name, fits an A4 page and a 1100-px screen
ID_COLUMNS = ("model", "method", "step", "reference")


def summary_html(summary: Summary) -> str:
    """The findings as a list, then the caveats under their own heading."""
    findings = "".join(f"<li>{html.escape(line)}</li>" for line in summary.findings)
    caveats = "".join(f"<li>{html.escape(line)}</li>" for line in summary.caveats)
    parts = [f'<ul class="findings">{findings}</ul>' if findings else ""]
    if caveats:
        parts.append(f'<h3>Caveats</h3><ul class="caveats">{caveats}</ul>')
    return "".join(parts) or "<p>Nothing to summarise.</p>"


def chunks(count: int, size: int = MAX_RUN_COLUMNS) -> list[range]:
    """`count` columns in parts of at most `size`, as even as they come (7 → 4 + 3, not 6 + 1)."""
    if count <= 0:
        return []
    parts = -(-count // size)
    base, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def _run_header(row: pd.Series, labels: Labels) -> str:
    name = html.escape(labels.run(str(row["model"])))
    if bool(row["reference"]):
        hover = "reference, not an unlearning run"
        return f'<th class="run reference" title="{hover}">{name}<br><small>reference</small></th>'
    step = "final" if pd.isna(row["step"]) else f"step {int(row['step'])}"
    return f'<th class="run">{name}<br><small>{html.escape(step)}</small></th>'


def _metric_header(key: str, number: int) -> str:
    named = metric_name(key)
    extra = ", ".join(part for part in (named.unit, named.direction) if part)
    hover = html.escape(f"{key}: {named.about}" if named.about else key, quote=True)
    return (
        f'<th scope="row" class="metric" title="{hover}">{html.escape(named.name)}<sup>{number}</sup>'
        + (f"<br><small>{html.escape(extra)}</small>" if extra else "")
        + "</th>"
    )


def metric_tables_html(frame: pd.DataFrame, labels: Labels) -> str:
    """`frame` (core.present.report.parts.metric_table) with metrics as rows and runs as columns, in parts of at
    most MAX_RUN_COLUMNS runs, each value as core.present.names.format_value writes it; raw keys in a footnote."""
    keys = [column for column in frame.columns if column not in ID_COLUMNS]
    runs = [row for _, row in frame.iterrows()]
    parts = chunks(len(runs))
    tables = []
    for n, part in enumerate(parts, 1):
        header = "".join(_run_header(runs[i], labels) for i in part)
        body = []
        for number, key in enumerate(keys, 1):
            cells = "".join(
                f'<td class="num{" reference" if bool(runs[i]["reference"]) else ""}">'
                f"{html.escape(format_value(key, runs[i][key]))}</td>"
                for i in part
            )
            body.append(f"<tr>{_metric_header(key, number)}{cells}</tr>")
        title = f'<p class="caption">Part {n} of {len(parts)}</p>' if len(parts) > 1 else ""
        tables.append(
            f'{title}<div class="table-wrap"><table class="metrics" id="table-metrics-{n}"><thead><tr>'
            f"<th>Metric</th>{header}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        )
    notes = "".join(
        f"<li><code>{html.escape(key)}</code>"
        + (f": {html.escape(metric_name(key).about)}" if metric_name(key).about else "")
        + "</li>"
        for key in keys
    )
    return "".join(tables) + f'<ol class="keys footnotes">{notes}</ol>'
