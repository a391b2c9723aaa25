"""Entry point: `streamlit run dashboard/app.py`. One file per page; each page draws the shared sidebar first.

The chosen page runs inside one error boundary: a UserError or an out-of-memory becomes its plain message, any
other exception a short message with an id whose traceback goes to the server log under the same id, so a bad
input never shows a traceback and the session (sidebar, other pages) goes on. A fragment's own rerun runs outside
this boundary: there Streamlit's handler applies, redacted by client.showErrorDetails in .streamlit/config.toml.
"""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from streamlit.navigation.page import Page  # noqa: E402
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException  # noqa: E402

from core.errors import UserError  # noqa: E402
from core.limits import is_out_of_memory  # noqa: E402
from dashboard.plain import plain  # noqa: E402

log = logging.getLogger("dashboard.app")  # not __name__: Streamlit runs this file as __main__
PAGES = Path(__file__).parent / "views"  # not "pages/": Streamlit would also serve those files as pages of their own
OUT_OF_MEMORY = "Out of memory. Try a shorter input, a smaller batch, bfloat16, or a smaller model."


def run_page(page: Page) -> None:
    """Run the chosen page; whatever it raises becomes a message on the page, never a traceback."""
    try:
        page.run()
    except ScriptControlException:  # st.stop / st.rerun / st.switch_page: Streamlit's own control flow
        raise
    except UserError as exc:
        st.error(plain(exc))
    except Exception as exc:
        error_id = secrets.token_hex(3)
        log.exception("page %r failed (error %s)", page.title, error_id)
        if is_out_of_memory(exc):
            st.error(f"{OUT_OF_MEMORY} (error {error_id})")
        else:
            st.error(f"Something went wrong (error {error_id}); the details are in the server log.")


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
run_page(navigation)
