"""Entry point: `streamlit run dashboard/app.py`. One file per page; each page draws the shared sidebar first and
runs inside one error boundary (dashboard/boundary.py): a bad input never shows a traceback, the session goes on.

Each page's definition carries the one question it answers; the app prints it above the page, so a first visitor
reads what every page is for. Icons are Material Symbols (shipped with Streamlit's own font, so they draw in a
browser without an emoji font)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard.boundary import error_boundary  # noqa: E402

VIEWS = Path(__file__).parent / "views"  # not "pages/": Streamlit would also serve those files as pages of their own


@dataclass(frozen=True)
class PageInfo:
    file: str
    title: str
    icon: str
    question: str


PAGES = (
    PageInfo("probe.py", "Probe", ":material/search:", "Which answer tokens did unlearning change, and by how much?"),
    PageInfo(
        "attribution.py",
        "Attribution",
        ":material/explore:",
        "Which prompt tokens push each model towards the answer, and where do the two models differ?",
    ),
    PageInfo(
        "layers.py",
        "Layers",
        ":material/layers:",
        "In which layers does the answer appear or vanish, how far do hidden states drift, and which weights changed?",
    ),
    PageInfo(
        "dataset.py",
        "Dataset",
        ":material/table_rows:",
        "How far did each question of a forget or retain set move between the two models?",
    ),
    PageInfo(
        "tradeoffs.py",
        "Tradeoffs",
        ":material/balance:",
        "How much model utility did each method and checkpoint give up for how much forgetting?",
    ),
    PageInfo(
        "screen.py",
        "Screen",
        ":material/view_list:",
        "Which of many models forget most and keep most on one data set, and which two should be contrasted?",
    ),
    PageInfo(
        "checkpoints.py",
        "Checkpoints",
        ":material/timeline:",
        "When during unlearning did each method stop giving this answer, from which layer on, and which checkpoint "
        "should be contrasted with the base?",
    ),
    PageInfo(
        "robustness.py",
        "Robustness",
        ":material/shield:",
        "Can a paraphrase, a jailbreak, quantisation or a little relearning bring the forgotten answers back?",
    ),
    PageInfo(
        "report.py", "Report", ":material/description:", "What goes into a shareable HTML report of this comparison?"
    ),
)
QUESTIONS = {page.title: page.question for page in PAGES}


st.set_page_config(page_title="Unlearning Lens", page_icon=":material/biotech:", layout="wide")
navigation = st.navigation(
    [
        st.Page(VIEWS / page.file, title=page.title, icon=page.icon, default=index == 0, help=page.question)
        for index, page in enumerate(PAGES)
    ]
)
st.caption(f":material/help: {QUESTIONS[navigation.title]}")
with error_boundary(f"page {navigation.title!r}"):
    navigation.run()
