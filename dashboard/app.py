"""Entry point: `streamlit run dashboard/app.py`. One file per page; each page draws the shared sidebar first and
runs inside one error boundary (dashboard/boundary.py): a bad input never shows a traceback, the session goes on."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard.boundary import error_boundary  # noqa: E402

PAGES = Path(__file__).parent / "views"  # not "pages/": Streamlit would also serve those files as pages of their own


st.set_page_config(page_title="Unlearning Lens", page_icon="🔬", layout="wide")
navigation = st.navigation(
    [
        st.Page(PAGES / "probe.py", title="Probe", icon="🔍", default=True),
        st.Page(PAGES / "attribution.py", title="Attribution", icon="🧭"),
        st.Page(PAGES / "layers.py", title="Layers", icon="🧅"),
        st.Page(PAGES / "dataset.py", title="Dataset", icon="📋"),
        st.Page(PAGES / "tradeoffs.py", title="Tradeoffs", icon="⚖️"),
        st.Page(PAGES / "robustness.py", title="Robustness", icon="🛡️"),
        st.Page(PAGES / "report.py", title="Report", icon="📄"),
    ]
)
with error_boundary(f"page {navigation.title!r}"):
    navigation.run()
