"""Text from a link, a file, a model or an error message, shown as text: Streamlit renders markdown (links, images,
HTML-like tags, LaTeX) in every message element, so anything not written by us is escaped first."""

from __future__ import annotations

import re

# Every character that CommonMark, GitHub-flavoured markdown or Streamlit's extensions (LaTeX, colours, emoji
# shortcodes, directives) give a meaning to; a backslash before any ASCII punctuation is always a literal.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=&\"'])")
# Streamlit rewrites some patterns where escapes no longer count (in the source, or in the parsed text):
# `:material/name:` becomes an icon, `:streamlit:` its logo, and arrows and comparisons between spaces (` -> `,
# ` >= `, ` -- `) typographic signs. A word joiner (U+2060: no width, no line break) inside the pattern keeps it as
# typed. Bare links (http://…, www.…, name@host) stay clickable links whose text is the address itself: nothing is
# loaded and nothing is hidden.
_WORD_JOINER = "\u2060"
_REWRITTEN = re.compile(r":material/|:streamlit:|(?<!\S)(?:<->|->|<-|--|>=|<=|~=)(?!\S)")


def plain(text: object) -> str:
    """`text` escaped so that st.markdown / st.error / st.warning / st.info / st.caption show it verbatim (runs of
    spaces and tabs show as one space, and a line's leading spaces are dropped, as in any HTML text)."""
    kept = _REWRITTEN.sub(lambda match: match[0][0] + _WORD_JOINER + match[0][1:], str(text))
    return _MARKDOWN.sub(r"\\\1", kept).replace("\n", "  \n")


def shown(markdown: str) -> str:
    """The text a person reads for `plain(text)`: escapes and hard line breaks undone, word joiners dropped (for
    tests and logs, which compare messages with what was meant)."""
    return re.sub(r"\\(.)", r"\1", markdown.replace("  \n", "\n")).replace(_WORD_JOINER, "")
