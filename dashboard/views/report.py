"""Report: one self-contained HTML file (and the same as PDF) for people who were not in the room, starting with a
summary generated from its numbers; plus chart images and CSV tables."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import streamlit as st

from core.attacks.runner import RobustnessResult
from core.common.errors import UserError
from core.evaluation.ingest import IngestResult
from core.evaluation.results import (
    default_axes,
    metric_options,
    our_result_folders,
    result_paths,
)
from core.present.report.checkpoints import CheckpointsView, view_from_page
from core.present.report.export import export_available
from core.present.report.labels import parse_labels
from core.present.report.model import Report, build_report
from core.present.report.parts import parse_probes, read_robustness, slug
from core.present.report.pdf import report_pdf
from dashboard.boundary import report_errors
from dashboard.exports import chart_downloads, table_download
from dashboard.plain import plain
from dashboard.sources import load_results, result_folder_inputs, typed_path
from dashboard.state import keys
from dashboard.state.pair import chat_default, current_pair, pair_key, shared_model_job
from dashboard.state.sidebar import sidebar
from dashboard.state.template import page_template

MAX_PROBES_CHARS = 100_000  # the probes box: a few dozen prompt|answer lines (each side is bounded by the core)
MAX_TITLE_CHARS = 200
MAX_NOTES_CHARS = 20_000  # a few pages of notes
MAX_LABELS_CHARS = 5_000  # a few dozen KEY=TEXT lines
NO_ROBUSTNESS, SESSION_ROBUSTNESS, FILE_ROBUSTNESS = "None", "This session's (Robustness page)", "A file or folder"
# the Checkpoints page's results in the session (dashboard/views/checkpoints.py: RESULT, LENS), keyed by its models
CHECKPOINTS_RESULT, CHECKPOINTS_LENS = "checkpoints_result", "checkpoints_lens"


def probe_default() -> str:
    """The Probe page's prompt and answer as one `prompt|answer` line (its widgets, else its last scored result).

    Without a pair chosen the widgets' text is not taken (the Probe page fills them with an example on its own, and
    a results-only report would then ask for a pair); a scored result is (it was scored under a pair)."""
    widgets = (st.session_state.get(keys.PROBE_PROMPT), st.session_state.get(keys.PROBE_ANSWER))
    prompt, answer = widgets if pair_key() is not None else (None, None)
    if not prompt:
        stored = st.session_state.get(keys.PROBE_RESULT)
        prompt, answer = (stored[1].get("prompt"), stored[1].get("answer")) if stored else (None, None)
    if not prompt:
        return ""
    return f"{' '.join(prompt.split())}|{answer}" if answer else " ".join(prompt.split())


def pick_results() -> tuple[IngestResult | None, list[str]]:
    """Result folders (ours and typed) and an optional oracle, read at once; (None, []) when none are named."""
    ours = [str(folder) for folder in our_result_folders()]
    picked = st.multiselect("Our runs and evaluations (cache home)", ours, default=ours) if ours else []
    typed, oracle = result_folder_inputs("report", "Result folders, one per line")
    if not picked and not typed.strip():
        return None, []
    paths = result_paths(picked, typed)
    return load_results(paths, oracle.strip() or None), paths


def pick_robustness() -> RobustnessResult | None:
    """No robustness result, the one the Robustness page ran in this session, or a robustness.json on disk."""
    stored = st.session_state.get("robustness_result")
    options = [NO_ROBUSTNESS, *([SESSION_ROBUSTNESS] if stored else []), FILE_ROBUSTNESS]
    choice = st.radio("Robustness result", options, horizontal=True, key="report_robustness_source")
    if choice == SESSION_ROBUSTNESS:
        return stored[1]
    if choice == FILE_ROBUSTNESS:
        typed = typed_path(
            "robustness.json or its folder", "report_robustness_path", "…/folder with robustness.json",
            "Type the folder `python -m core robustness --out DIR` wrote, or its robustness.json.",
        )  # fmt: skip
        return None if typed is None else read_robustness(Path(typed[0]))
    return None


def pick_checkpoints() -> list[CheckpointsView]:
    """The Checkpoints page's view of this session (with its logit lens where it ran one for the same models and
    question), when there is one and its toggle is on."""
    entry = st.session_state.get(CHECKPOINTS_RESULT)
    if not entry:
        st.caption("No Checkpoints view yet: probe every model on the Checkpoints page to add one here.")
        return []
    key, stored = entry
    question = stored["probe"]["results"][0]
    label = f"{question['prompt']}|{question.get('answer') or ''}"
    include = st.toggle(
        plain(f"Checkpoints view of {label} under {len(stored['probe']['models'])} models (Checkpoints page)"),
        value=True, key="report_checkpoints",
        help="The answer's log-prob against training step, the token × model map and, where it ran, the logit lens "
        "across checkpoints, as the Checkpoints page shows them",
    )  # fmt: skip
    if not include:
        return []
    lens = st.session_state.get(CHECKPOINTS_LENS)
    if lens and lens[0] == key:
        try:
            return [view_from_page(stored, lens[1])]
        except UserError:
            st.caption("The logit lens on the Checkpoints page ran on another question: the view goes without it.")
    return [view_from_page(stored)]


def labels() -> dict[str, str]:
    """The sides by their specs as typed in the sidebar, then the names typed here (they win)."""
    key = pair_key()
    typed = {"base": key[0], "unlearned": key[1]} if key else {}
    lines = [line for line in st.session_state.get("report_labels", "").splitlines() if line.strip()]
    return typed | parse_labels(lines)


def pick_axes(results: IngestResult) -> tuple[str, str]:
    options = metric_options(results.summary)
    x_default, y_default = default_axes(options, results.summary)
    left, right = st.columns(2)
    x = left.selectbox("Tradeoff x axis", options, index=options.index(x_default), key="report_x")
    y = right.selectbox("Tradeoff y axis", options, index=options.index(y_default), key="report_y")
    return x, y


def build(
    results: IngestResult | None,
    sources: list[str],
    axes: tuple[str | None, str | None],
    robustness: RobustnessResult | None,
    checkpoints: list[CheckpointsView],
) -> None:
    """Compute the report with a progress bar inside a status box; keep it (and its HTML) in the session."""
    options = st.session_state
    with st.status("Building the report…", expanded=True) as status:
        bar = st.progress(0.0, text="starting")
        try:
            report = build_report(
                current_pair(), results=results, x_metric=axes[0], y_metric=axes[1], sources=sources,
                probes=parse_probes(options.get("report_probes", "")),
                chat=page_template(options.get("report_chat", False)),
                with_attribution=options.get("report_attribute", False), with_lens=options.get("report_lens", False),
                robustness=robustness, checkpoints=checkpoints, labels=labels(), notes=options.get("report_notes", ""),
                title=options.get("report_title", ""),
                progress=lambda message, fraction: bar.progress(min(1.0, fraction), text=plain(message)),
            )  # fmt: skip
            bar.progress(1.0, text="writing the HTML")
            document = report.render_html().encode("utf-8")
        except Exception:
            status.update(label="Could not build the report", state="error")
            raise
        status.update(label="Report ready", state="complete", expanded=False)
    st.session_state[keys.REPORT_BUILT] = (report, document, f"{slug(report.title)}.html")


def draw_summary(report: Report) -> None:
    """The generated summary, as the report opens with it."""
    summary = report.summary()
    st.subheader("Summary")
    st.markdown("\n".join(f"- {plain(line)}" for line in summary.findings) or "Nothing to summarise.")
    if summary.caveats:
        st.caption("  \n".join(f"Caveat: {plain(line)}" for line in summary.caveats))


def draw_built(report: Report, document: bytes, file_name: str) -> None:
    charts, tables = report.charts(), report.tables()
    html_column, pdf_column = st.columns(2)
    html_column.download_button(
        "Download report (HTML)", data=document, file_name=file_name, mime="text/html", type="primary",
        on_click="ignore",
    )  # fmt: skip
    if export_available():
        pdf_column.download_button(
            "Download report (PDF)", data=partial(report_pdf, report), file_name=f"{Path(file_name).stem}.pdf",
            mime="application/pdf", on_click="ignore", help="The same report, printed by Chromium when clicked",
        )  # fmt: skip
    else:
        pdf_column.caption("The PDF needs Chromium (apt-get install chromium, or set BROWSER_PATH).")
    st.caption(
        f"{len(document) / 2**20:.1f} MB · {len(charts)} charts · {len(tables)} tables · opens offline in any "
        "browser (plotly.js is inside the file)."
    )
    draw_summary(report)
    if report.warnings:
        with st.expander(f"{len(report.warnings)} warning(s)"):
            st.text("\n".join(report.warnings))
    st.subheader("Export a chart or a table")
    if charts:
        chosen = st.selectbox("Chart", range(len(charts)), format_func=lambda i: charts[i].title, key="report_chart")
        st.plotly_chart(charts[chosen].figure, key="report_chart_preview")
        chart_downloads(charts[chosen].figure, charts[chosen].name, key="report_chart")
    if tables:
        chosen = st.selectbox("Table", range(len(tables)), format_func=lambda i: tables[i].title, key="report_table")
        st.dataframe(tables[chosen].frame, hide_index=True)
        table_download(tables[chosen].frame, tables[chosen].name, key="report_table")


sidebar()
st.title("Report")
st.caption(
    "One HTML file (and the same as PDF) that opens with a summary generated from its numbers, then your notes, "
    "the model pair, the tradeoff chart, a metric table, robustness, probes with coloured tokens, attribution and "
    "layer views, and the Checkpoints page's view. Every chart also downloads as PNG / SVG / PDF."
)
if current_pair() is None:
    st.info("No model pair is loaded: the report can hold results only. Load a pair in the sidebar for probes.")

results, sources, axes, results_read = None, [], (None, None), False
with st.expander("Results", expanded=True), report_errors():
    results, sources = pick_results()
    if results is not None:
        axes = pick_axes(results)
    results_read = True
robustness, robustness_read = None, False
with st.expander("Robustness", expanded=False), report_errors():
    robustness = pick_robustness()
    robustness_read = True
checkpoints, checkpoints_read = [], False
with st.expander("Checkpoints", expanded=bool(st.session_state.get(CHECKPOINTS_RESULT))), report_errors():
    checkpoints = pick_checkpoints()
    checkpoints_read = True

st.session_state.setdefault("report_probes", probe_default())
st.text_area(
    "Probes, one per line: prompt|answer",
    key="report_probes",
    max_chars=MAX_PROBES_CHARS,
    help="The last | separates the prompt from its reference answer; a line without | scores the prompt itself.",
)
cols = st.columns(3)
cols[0].toggle("Chat template", value=chat_default(), key="report_chat")
cols[1].toggle("Attribution view", key="report_attribute", help="Integrated gradients per probe with an answer")
cols[2].toggle("Layer view", key="report_lens", help="The logit lens per probe with an answer")
st.text_input("Title", value="Unlearning report", key="report_title", max_chars=MAX_TITLE_CHARS)
st.text_area(
    "Notes",
    key="report_notes",
    max_chars=MAX_NOTES_CHARS,
    help="Shown after the generated summary. Blank lines split paragraphs; - starts a list item.",
)
st.text_area(
    "Names to show, one per line: KEY=TEXT",
    key="report_labels",
    max_chars=MAX_LABELS_CHARS,
    placeholder="unlearned=NPO, step 12\nrmu=RMU",
    help="KEY is base, unlearned or a run's name in the results; the models are called by their specs as typed "
    "in the sidebar unless named here. Local paths are cut to their last folder.",
)

if st.button("Build report", type="primary"):
    if not results_read:
        st.error("The result folders above could not be read; fix or clear them first.")
    elif not robustness_read:
        st.error("The robustness result above could not be read; fix it or choose None.")
    elif not checkpoints_read:
        st.error("The Checkpoints view above could not be read; turn it off or probe again on the Checkpoints page.")
    else:
        with report_errors(), shared_model_job("report"):
            build(results, sources, axes, robustness, checkpoints)

built = st.session_state.get(keys.REPORT_BUILT)
if built is not None:
    draw_built(*built)
