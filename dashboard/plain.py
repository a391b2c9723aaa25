"""Text from a link, a file, a model or an error message, shown as text: Streamlit renders markdown (links, images,
HTML-like tags, LaTeX) in every message element, so anything not written by us is escaped first."""

from __future__ import annotations

import re

# Every character that CommonMark, GitHub-flavoured markdown or Streamlit's extensions (LaTeX, colours, emoji
# shortcodes, directives) give a meaning to; a backslash before any ASCII punctuation is always a literal.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=&\"'])")


def plain(text: object) -> str:
    """`text` escaped so that st.markdown / st.error / st.warning / st.info / st.caption show it verbatim."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")
