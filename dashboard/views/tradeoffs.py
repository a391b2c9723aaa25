"""Tradeoffs: where runs sit between forgetting and keeping utility; click a checkpoint for its metrics and items.

The chosen result folders, oracle and axes live in the URL (folder=…&folder=…&oracle=…&x=…&y=…), so a link
reloads the same results with the same axes. A link reads only folders inside the data roots by itself
(core.evaluation.results:
the cache home, the example data, $ULENS_DATA_ROOTS); for any other folder it names, the page asks first.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st

from core.evaluation.ingest import IngestResult
from core.evaluation.results import (
    FQ_MU,
    Point,
    checkpoint_metrics,
    default_axes,
    has_points,
    has_truth_ratios,
    metric_options,
    mia_attacks,
    our_result_folders,
    outside_roots,
    point_from_selection,
    result_paths,
    split_bar_metrics,
    truth_ratio_oracles,
)
from core.present import numbers
from core.present.figures.tradeoffs import (
    forget_quality_utility_figure,
    mia_figure,
    split_bars_figure,
    tradeoff_figure,
    truth_ratio_figure,
)
from dashboard.boundary import fragment, report_errors
from dashboard.exports import chart, csv_download
from dashboard.links import PageLink, Params
from dashboard.plain import plain
from dashboard.sources import default_results, load_results, result_folder_inputs
from dashboard.state import keys
from dashboard.state.sidebar import sidebar
from dashboard.views.sweep_progress import sweep_progress

DEFAULT_ATTACK = "mia_min_k"
LINK = PageLink(("folder", "oracle", "x", "y"), seen_key="tradeoff_url", repeated=("folder",))  # one folder= each
METRIC_COLUMNS = {"value": st.column_config.NumberColumn(format=numbers.TABLE_NUMBER)}
MAX_RUN_NAME_CHARS = 200  # core.data.uploads.safe_name allows no more
PENDING = "tradeoff_pending"  # session key: (folders, oracle) a link named outside the data roots, not read yet
SOURCES = "tradeoff_sources"  # session key: (folders, oracle) loaded
URL_AXES = "tradeoff_url_axes"  # session key: the axes a link named, set once the axis pickers know the metrics
OPENED = "tradeoff_opened"  # session key: (sources, note) the page opened on by itself, on the session's first visit


def restore_from_url(ours: list[str]) -> None:
    """Load the folders and axes of a link the session has not written itself (a new or edited link)."""
    wanted = LINK.new_params()
    if wanted is None:
        return
    folders = list(wanted.get("folder", ()))
    if folders:
        st.session_state["tradeoff_ours"] = [folder for folder in folders if folder in ours]
        st.session_state["tradeoff_paths"] = "\n".join(folder for folder in folders if folder not in ours)
        st.session_state["tradeoff_oracle"] = str(wanted.get("oracle", ""))
        sources = (tuple(folders), st.session_state["tradeoff_oracle"].strip() or None)
        if outside_roots([*sources[0], *([sources[1]] if sources[1] else [])]):
            st.session_state.pop(SOURCES, None)  # not the earlier results under someone else's link
            st.session_state[PENDING] = sources
        else:
            st.session_state.pop(PENDING, None)
            st.session_state[SOURCES] = sources
    st.session_state[URL_AXES] = {key: wanted[key] for key in ("x", "y") if key in wanted}


def read_pending() -> None:
    """The person at the browser chose to read the folders a link named outside the data roots."""
    pending = st.session_state.pop(PENDING, None)
    if pending is not None:  # None: a second click in the same moment; the first one already read them
        st.session_state[SOURCES] = pending


def ask_pending() -> bool:
    """For a link naming folders outside the data roots: say so (paths as plain text) and offer to read them.

    Opening a link is not a choice to read a folder: anyone can send one, and without this the server would walk
    and show whatever `*_SUMMARY.json` a named folder (or `/`) holds. Returns whether the question is shown."""
    pending = st.session_state.get(PENDING)
    if pending is None:
        return False
    folders, oracle = pending
    outside = outside_roots([*folders, *([oracle] if oracle else [])])
    st.warning(
        "This link names folders outside the data roots (the cache home, the example data and the folders in "
        "ULENS_DATA_ROOTS). Nothing was read from them; read them only if you trust the link:"
    )
    st.text("\n".join(outside))
    st.button("Read these folders", type="primary", key="tradeoff_read_pending", on_click=read_pending)
    return True


def write_url() -> None:
    """Put the loaded folders, oracle and axes into the URL, only when something changed."""
    sources = st.session_state.get(SOURCES)
    if sources is None:
        return
    paths, oracle = sources
    params: Params = {"folder": tuple(paths)}
    if oracle:
        params["oracle"] = oracle
    params |= {
        key: st.session_state[f"tradeoff_{key}"] for key in ("x", "y") if st.session_state.get(f"tradeoff_{key}")
    }
    LINK.write(params)


def pick_sources() -> None:
    """Result folders (ours, typed, uploaded) and an optional oracle; 'Load results' stores the choice."""
    ours = [str(folder) for folder in our_result_folders()]
    restore_from_url(ours)
    open_default()
    with st.expander("Result folders", expanded=SOURCES not in st.session_state):
        picked = []
        if ours:
            st.session_state.setdefault("tradeoff_ours", ours)
            st.session_state["tradeoff_ours"] = [
                folder for folder in st.session_state["tradeoff_ours"] if folder in ours
            ]
            picked = st.multiselect("Our runs and evaluations (cache home)", ours, key="tradeoff_ours")
        text, oracle = result_folder_inputs(
            "tradeoff",
            "Result folders or files, one per line",
            paths_help="open-unlearning output folders (EVAL/SUMMARY JSON, checkpoint-*/evals) or legacy TOFU eval "
            "logs",
            oracle_help="Results of the model retrained without the forget set: forget quality is computed where "
            "missing",
        )
        uploads = st.file_uploader(
            "Or upload the EVAL/SUMMARY JSON files of one run", type="json", accept_multiple_files=True
        )
        run_name = st.text_input(
            "Run name for the uploaded files", value="uploaded", key="tradeoff_run_name", max_chars=MAX_RUN_NAME_CHARS
        )
        if st.button("Load results", type="primary"):
            with report_errors():
                files = [(upload.name, upload.getvalue()) for upload in uploads or []]
                paths = result_paths(picked, text, files, run_name)
                st.session_state[SOURCES] = (tuple(paths), oracle.strip() or None)
                st.session_state.pop(PENDING, None)  # typed and clicked: a choice of its own


def open_default() -> None:
    """The first visit with nothing chosen (no link either): open the demo experiment's own evaluation, or the
    bundled open-unlearning example before it exists, so the page shows results at once."""
    state = st.session_state
    if OPENED in state or SOURCES in state or PENDING in state or LINK.params():
        return
    default = default_results()
    state[OPENED] = None if default is None else ((default.paths, default.oracle), default.note)
    if default is not None:
        state[SOURCES] = (default.paths, default.oracle)


def draw_warnings(result: IngestResult) -> None:
    """What could not be read, as a plain-text table (file contents never reach markdown or HTML)."""
    if result.warnings:
        st.warning(f"{len(result.warnings)} problem(s) while reading the results; the rest loaded.")
        st.dataframe(pd.DataFrame([asdict(warning) for warning in result.warnings]), hide_index=True)


@fragment
def tradeoff_panel(result: IngestResult) -> None:
    """Axis pickers, the tradeoff chart (click a point), FQ vs MU, and the clicked checkpoint's details."""
    with report_errors():
        draw_tradeoffs(result)


def draw_tradeoffs(result: IngestResult) -> None:
    with_fq = has_points(result.summary, *FQ_MU)
    tabs = st.tabs(["Forget vs retain", "Forget quality vs model utility"]) if with_fq else [st.container()]
    with tabs[0]:
        point = draw_tradeoff_chart(result)
    if with_fq:
        tabs[1].plotly_chart(forget_quality_utility_figure(result.summary), key="tradeoff_fq_mu")
    if point is None:
        st.caption("Click a point in the forget-vs-retain chart to see that checkpoint's metrics.")
        return
    draw_checkpoint(result, point)


def draw_tradeoff_chart(result: IngestResult) -> Point | None:
    """Axis pickers and the clickable tradeoff chart; returns the clicked checkpoint, if any."""
    options = metric_options(result.summary)
    choose_axes(options, result.summary)
    left, middle, right = st.columns([2, 2, 1])
    x = left.selectbox("x axis", options, key="tradeoff_x")
    y = middle.selectbox("y axis", options, key="tradeoff_y")
    log_y = right.toggle("log y", key="tradeoff_log_y")
    write_url()
    if not has_points(result.summary, x, y):
        st.info("No run has values for both of these metrics; pick other axes.")
        return None
    figure = tradeoff_figure(result.summary, x, y, log_y=log_y)
    event = chart(figure, f"tradeoff {y} vs {x}", key=keys.TRADEOFF_CHART, on_select="rerun", selection_mode="points")
    return point_from_selection(figure, event["selection"]["points"])


def choose_axes(options: list[str], summary: pd.DataFrame) -> None:
    """Set the axis pickers before they are drawn: a link's axes once, else keep the choice while it is offered."""
    defaults = dict(zip(("x", "y"), default_axes(options, summary), strict=True))
    from_url = st.session_state.pop(URL_AXES, {})
    for axis, default in defaults.items():
        key, wanted = f"tradeoff_{axis}", from_url.get(axis)
        if wanted is not None and wanted not in options:
            st.warning(
                f"The link's {axis} axis {plain(repr(wanted))} is not a metric of these results; showing "
                f"{plain(default)}."
            )
        if wanted in options:
            st.session_state[key] = wanted
        elif st.session_state.get(key) not in options:
            st.session_state[key] = default


def draw_checkpoint(result: IngestResult, point: Point) -> None:
    st.subheader("Selected checkpoint")
    st.text(point.label)
    left, right = st.columns(2)
    with left, report_errors():
        st.dataframe(checkpoint_metrics(result.summary, point), hide_index=True, column_config=METRIC_COLUMNS)
    with right, report_errors():
        names = split_bar_metrics(result.summary, point)
        figure = split_bars_figure(result.summary, point.model, step=point.step, metric_names=names)
        chart(figure, f"{point.model} metrics by split", key="tradeoff_splits")
    with report_errors():
        draw_truth_ratios(result, point)
    with report_errors():
        draw_mia(result, point)


def draw_truth_ratios(result: IngestResult, point: Point) -> None:
    if not has_truth_ratios(result, point):
        st.caption("Truth-ratio distribution: this checkpoint has no per-item forget truth ratios (TOFU_EVAL.json).")
        return
    oracles = truth_ratio_oracles(result, point)
    if not oracles:
        st.caption("Truth-ratio distribution: load an oracle run with per-item forget truth ratios to compare with.")
        return
    oracle = oracles[0]
    if len(oracles) > 1:
        oracle = st.selectbox("Oracle", oracles, format_func=lambda run: run.label, key="tradeoff_oracle_run")
    figure = truth_ratio_figure(result.items, point.model, oracle.model, step=point.step, oracle_step=oracle.step)
    chart(figure, f"{point.model} truth ratios", key="tradeoff_truth_ratio")


def draw_mia(result: IngestResult, point: Point) -> None:
    attacks = mia_attacks(result.items, point)
    if not attacks:
        st.caption("Membership inference: no per-item forget and holdout scores for this checkpoint.")
        return
    default = attacks.index(DEFAULT_ATTACK) if DEFAULT_ATTACK in attacks else 0
    attack = st.selectbox("Membership-inference attack", attacks, index=default, key="tradeoff_attack")
    figure = mia_figure(result.items, point.model, attack, step=point.step)
    chart(figure, f"{point.model} {attack}", key="tradeoff_mia")


sidebar()
st.title("Tradeoffs")
sweep_progress()  # sweeps writing into the cache home (python -m core … --ray): results appear as they land
pick_sources()
asked = ask_pending()
sources = st.session_state.get(SOURCES)
if sources is None:
    if not asked:
        st.info("Choose result folders above and press Load results.")
    st.stop()
paths, oracle = sources
opened = st.session_state.get(OPENED)
if opened and tuple(opened[0]) == tuple(sources):
    st.caption(f":material/info: {opened[1]} Choose other folders under *Result folders*.")
write_url()
loaded = None
with report_errors():
    loaded = load_results(paths, oracle)
if loaded is None:
    st.stop()
draw_warnings(loaded)
runs = loaded.runs()
st.caption(f"{runs['model'].nunique()} runs, {len(runs)} evaluations from {len(loaded.files)} files.")
if loaded.summary.empty:
    st.error("The result files hold no metric values.")
    st.stop()
tradeoff_panel(loaded)
with st.expander("All metrics"):
    st.dataframe(loaded.summary, hide_index=True, key="tradeoff_summary", column_config=METRIC_COLUMNS)
    csv_download(loaded.summary, "Download summary table (CSV)", "tradeoff_summary.csv", key="tradeoff_download")
