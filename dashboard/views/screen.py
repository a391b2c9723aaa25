"""Screen: many models × the metrics of one data set in one sortable table, each run with a sparkline of its
trajectory; pick two rows to contrast them as the pair on every page (the Screen → Contrast flow)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.analyses.multi.screen import dataset_rows, datasets, default_metrics, row_spec, screen_table
from core.evaluation.ingest import IngestResult
from core.evaluation.results import metric_options, our_result_folders, result_paths
from dashboard.boundary import report_errors
from dashboard.exports import table_download
from dashboard.plain import plain
from dashboard.sources import load_results, result_folder_inputs
from dashboard.state.selection import is_new_choice, pair_caption, use_pair
from dashboard.state.sidebar import sidebar

SOURCES = "screen_sources"  # session key: (result paths, oracle) loaded
TABLE = "screen_table"  # the table widget (its selected rows)
PAIR_INPUTS = ("screen_base", "screen_unlearned")  # the pair the picked rows fill in (editable)
NOTE = "screen_note"


def pick_sources() -> None:
    """Our result folders, typed folders and an oracle; 'Load results' keeps the choice."""
    ours = [str(folder) for folder in our_result_folders()]
    with st.expander("Result folders", expanded=SOURCES not in st.session_state):
        picked = st.multiselect("Our runs and evaluations (cache home)", ours, key="screen_ours") if ours else []
        text, oracle = result_folder_inputs(
            "screen", "Result folders or files, one per line",
            paths_help="open-unlearning output folders (EVAL/SUMMARY JSON, checkpoint-*/evals) or legacy TOFU logs",
            oracle_help="Results of the model retrained without the forget set: forget quality is computed where "
            "missing",
        )  # fmt: skip
        if st.button("Load results", type="primary", key="screen_load"):
            with report_errors():
                st.session_state[SOURCES] = (tuple(result_paths(picked, text, [], "uploaded")), oracle.strip() or None)


def column_config(metrics: list[str], trend: str | None) -> dict:
    config: dict = {metric: st.column_config.NumberColumn(format="%.4g") for metric in metrics}
    config["step"] = st.column_config.NumberColumn(format="%d")
    config["trajectory"] = st.column_config.LineChartColumn(
        f"{trend} by step" if trend else "trajectory", help="The metric across the run's checkpoints, in step order"
    )
    return config


def draw_table(result: IngestResult) -> pd.DataFrame | None:
    """Data set, metrics and trend pickers and the table; returns the table (None without results)."""
    names = datasets(result.summary)
    if not names:
        st.info("These folders hold no results.")
        return None
    left, middle, right = st.columns([1, 3, 1])
    dataset = left.selectbox("Data set", names, key="screen_dataset")
    rows = dataset_rows(result.summary, dataset)
    options = metric_options(rows)
    metrics = middle.multiselect("Metrics", options, default=default_metrics(options), key=f"screen_metrics_{dataset}")
    trend = right.selectbox("Sparkline", metrics or options, key=f"screen_trend_{dataset}")
    every = st.toggle("Every checkpoint (not only each run's last)", key="screen_every")
    table = screen_table(rows, metrics, trend, every)
    event = st.dataframe(
        table, hide_index=True, key=TABLE, on_select="rerun", selection_mode="multi-row",
        column_config=column_config(metrics, trend),
    )  # fmt: skip
    table_download(table.drop(columns=["trajectory"]), f"screen {dataset}", key="screen_csv")
    picked = list(event["selection"]["rows"]) if event else []
    fill_pair(table, picked)
    return table


def fill_pair(table: pd.DataFrame, picked: list[int]) -> None:
    """Two picked rows fill the pair's inputs (the first as base); a row whose model the results do not locate
    leaves its input for the person to type."""
    if len(picked) != 2 or not is_new_choice("screen", tuple(picked)):
        return
    for key, index in zip(PAIR_INPUTS, picked, strict=True):
        row = table.iloc[index]
        step = None if pd.isna(row["step"]) else int(row["step"])
        st.session_state[key] = row_spec(row["model"], step, row["source"]) or ""


def contrast_panel() -> None:
    st.subheader("Contrast two rows")
    st.caption("Pick two rows in the table (the first becomes the base), check the models, then load them as the pair.")
    left, right = st.columns(2)
    base = left.text_input("Base model", key=PAIR_INPUTS[0], help="Filled from the first picked row where known")
    unlearned = right.text_input("Unlearned model", key=PAIR_INPUTS[1], help="Filled from the second picked row")
    if not (base.strip() and unlearned.strip()):
        st.caption("The results do not say where a model is unless they sit in its folder; type its spec.")
    clicked = st.button("Contrast these two", type="primary", key="screen_contrast", disabled=not (base and unlearned))
    if clicked and use_pair(base, unlearned):
        st.session_state[NOTE] = f"Now contrasting {pair_caption()} on every page."
        st.rerun()


sidebar()
st.title("Screen")
if note := st.session_state.pop(NOTE, None):
    st.success(plain(note))
pick_sources()
sources = st.session_state.get(SOURCES)
if not sources:
    st.info("Load result folders to screen their models.")
    st.stop()
with report_errors():
    loaded = load_results(*sources)
    if draw_table(loaded) is not None:
        contrast_panel()
