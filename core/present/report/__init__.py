"""Reports for people who were not in the room: one self-contained HTML file, the same as PDF, chart images and CSV.

`model` holds what a report shows (Report, built by `build_report`), `summary` the summary generated from its
numbers, `labels` the names of models and runs (never local paths), `parts` its charts and tables, `layout` the
summary and the metrics table laid out for reading, `render` the HTML, `pdf` the print version printed by Chromium,
and `export` the chart images and files. The HTML holds plotly.js once (inlined, so it opens offline) and every
chart as JSON drawn by `Plotly.newPlot`; the charts are the dashboard's own (core.present.figures). Every model- or
user-produced string is escaped: figure JSON sits in `application/json` script elements with `<`, `>` and `&`
written as JSON escapes, and all other text goes through `html.escape`. Chart images come from kaleido driving the
system Chromium; one warm export browser serves the whole process.
"""
