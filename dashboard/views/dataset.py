"""Dataset: load a forget/retain set, score every item under both models, and open any item in Probe."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from core.analyses.item_scores import dataset_key, filter_items, load_uploaded_dataset, score_items
from core.common.errors import UserError
from core.data.qa import SPLIT_NAMES, QADataset, load_demo_splits, load_qa_dataset
from core.present import numbers
from dashboard.boundary import fragment, report_errors
from dashboard.exports import csv_download
from dashboard.sources import typed_path
from dashboard.state import keys
from dashboard.state.focus import request_scroll, results_header
from dashboard.state.pair import chat_default, pair_key, pair_or_progress, shared_model_job
from dashboard.state.sidebar import sidebar
from dashboard.state.template import page_template

SOURCES = ("Demo set", "File path", "Upload")
PROBE_PAGE = Path(__file__).with_name("probe.py")
UPLOAD_KEY = "dataset_upload_parsed"  # session key: (upload id, name, size) and its QADataset or UserError
MAX_FILTER_CHARS = 1_000  # the table filter box
RESULTS_ANCHOR = "dataset-results"
NUMBER = st.column_config.NumberColumn(format=numbers.TABLE_NUMBER)
PROBABILITY = st.column_config.NumberColumn(format=numbers.TABLE_PROBABILITY)
COLUMN_CONFIG = {
    "question": st.column_config.TextColumn(width="medium"),
    "answer": st.column_config.TextColumn(width="medium"),
    "logprob_base": NUMBER,
    "logprob_unlearned": NUMBER,
    "delta": st.column_config.NumberColumn("Δ log-prob", format=numbers.TABLE_SIGNED, help="unlearned − base"),
    "prob_base": PROBABILITY,
    "prob_unlearned": PROBABILITY,
    "truth_ratio_base": NUMBER,
    "truth_ratio_unlearned": NUMBER,
}
MEANWHILE = "Meanwhile: the set's items are listed above; scoring them starts once the models are ready."


@st.cache_data(show_spinner=False)
def demo_split(split: str) -> QADataset:
    return getattr(load_demo_splits(), split)


@st.cache_data(show_spinner=False, max_entries=8)
def dataset_from_path(path: str, mtime_ns: int) -> QADataset:
    """Read once per (path, modification time): `mtime_ns` is in the key, so an edited file is read again."""
    return load_qa_dataset(path)


def parsed_upload(upload: UploadedFile) -> QADataset:
    """The uploaded set, parsed once per upload (each has its own id): a rerun (any widget change) neither
    re-reads, re-hashes nor re-stores its bytes, and a file that failed is not parsed again either."""
    key = (upload.file_id, upload.name, upload.size)
    cached = st.session_state.get(UPLOAD_KEY)
    if cached is None or cached[0] != key:
        try:
            parsed: QADataset | UserError = load_uploaded_dataset(upload.name, upload.getvalue())
        except UserError as exc:
            parsed = exc
        cached = st.session_state[UPLOAD_KEY] = (key, parsed)
    if isinstance(cached[1], UserError):
        raise cached[1]
    return cached[1]


def choose_dataset() -> QADataset | None:
    """The set picked by the source widgets, or None (with a message on the page) when there is none."""
    source = st.radio("Source", SOURCES, horizontal=True, key="dataset_source")
    with report_errors():
        if source == "Demo set":
            return demo_split(st.selectbox("Demo split", SPLIT_NAMES, key="dataset_demo_split"))
        if source == "File path":
            typed = typed_path(
                "File path", "dataset_path", "…/forget10_perturbed.json",
                "Type the path of a JSONL, JSON, CSV or parquet file, or a saved `datasets` folder.",
            )  # fmt: skip
            return None if typed is None else dataset_from_path(*typed)
        upload = st.file_uploader("QA file", type=["jsonl", "json", "csv", "parquet"], key="dataset_upload")
        if upload is None:
            st.info("Upload a JSONL, JSON, CSV or parquet file with question and answer fields.")
            return None
        return parsed_upload(upload)
    return None


def score_panel(dataset: QADataset) -> None:
    """Settings and the button that scores the set under the loaded pair (stored per pair and set)."""
    cols = st.columns(4)
    chat = cols[0].toggle("Chat template", value=chat_default(), key="dataset_chat")
    limit = cols[1].number_input("Items", 1, len(dataset), min(len(dataset), 50), key="dataset_limit")
    batch_size = cols[2].number_input("Batch size", 1, 64, 8, key="dataset_batch")
    with_perturbed = any(item.perturbed_answer for item in dataset)
    truth = cols[3].checkbox("Truth ratio", value=with_perturbed, disabled=not with_perturbed, key="dataset_truth")
    above = st.container()
    pair = pair_or_progress(MEANWHILE)  # the load's progress, under the button, while the pair loads
    if not above.button("Compute per-item metrics", type="primary", disabled=pair is None) or pair is None:
        return
    key = (pair_key(), dataset_key(dataset))
    with st.status(f"Scoring {int(limit)} items under both models…", expanded=True) as status:
        bar = st.progress(0.0)
        frame = None
        with report_errors(), shared_model_job("dataset scoring"):
            frame = score_items(
                pair, dataset, chat=page_template(chat), batch_size=int(batch_size), limit=int(limit),
                truth_ratio=truth,
                progress=lambda done: bar.progress(done, text=f"{done:.0%} of the requests"),
            )  # fmt: skip
        if frame is None:
            status.update(label="Scoring failed", state="error")
            return
        st.session_state["dataset_scores"] = (key, frame)
        status.update(label=f"Scored {len(frame)} items", state="complete", expanded=False)
        request_scroll(RESULTS_ANCHOR)


@fragment
def results_panel(frame: pd.DataFrame) -> None:
    """Summary numbers, a filterable table (click a header to sort), and the selected item handed to Probe."""
    results_header("Per-item metrics", RESULTS_ANCHOR)
    cols = st.columns(3)
    cols[0].metric("Items scored", len(frame))
    base, unlearned = frame["prob_base"].mean(), frame["prob_unlearned"].mean()
    cols[1].metric(
        "Mean answer prob, unlearned",
        numbers.probability(unlearned),
        delta=f"{numbers.signed(unlearned - base)} vs base",
        help=f"base {numbers.probability(base)}",
    )
    cols[2].metric("Mean Δ log-prob", f"{frame['delta'].mean():+.3f}", help="unlearned − base, summed over tokens")
    left, right = st.columns([3, 1])
    text = left.text_input("Filter: question or answer contains", key="dataset_filter", max_chars=MAX_FILTER_CHARS)
    min_delta = right.number_input("|Δ| at least", min_value=0.0, value=0.0, step=0.5, key="dataset_min_delta")
    shown = filter_items(frame, text, min_delta)
    event = st.dataframe(
        shown, key=keys.DATASET_TABLE, on_select="rerun", selection_mode="single-row", hide_index=True,
        column_config=COLUMN_CONFIG,
    )  # fmt: skip
    csv_download(shown, "Download per-item table (CSV)", "dataset_items.csv", key="dataset_download")
    rows = event["selection"]["rows"]
    if not rows:
        st.caption("Select a row to open that question and answer in Probe.")
        return
    row = shown.iloc[rows[0]]
    st.text(f"{row['question']}\n→ {row['answer']}")
    if st.button("Open in Probe", type="primary"):
        st.session_state[keys.PROBE_HANDOVER] = {"prompt": row["question"], "answer": row["answer"]}
        st.switch_page(PROBE_PAGE)


sidebar()
st.title("Dataset")
dataset = choose_dataset()
if dataset is None:
    st.stop()
perturbed = sum(1 for item in dataset if item.perturbed_answer)
st.caption(f"{len(dataset)} items; {perturbed} with perturbed answers for the truth ratio.")
with st.expander("Items"):
    st.dataframe(dataset.to_frame(), hide_index=True)
score_panel(dataset)
stored = st.session_state.get("dataset_scores")
if stored and stored[0] == (pair_key(), dataset_key(dataset)):
    results_panel(stored[1])
