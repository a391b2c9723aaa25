"""The error boundaries: a page, or a fragment rerunning on its own, turns whatever it raises into a message on the
page, never a traceback, and the session (sidebar, other pages) goes on.

A UserError shows its own message, an allocation failure the out-of-memory hint; anything else a short message with
an id whose traceback goes to the server log under the same id. Streamlit's control flow (st.stop, st.rerun,
st.switch_page) passes through untouched.

A page that hangs can be asked where it waits: `kill -USR1 <server pid>` writes every thread's stack to the server's
log (stderr), without stopping it (dashboard/diagnostics.py; `kill -USR2` also says each session's state).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

from core.common.errors import UserError
from core.common.limits import is_out_of_memory
from dashboard.diagnostics import install_stack_dump
from dashboard.plain import plain

log = logging.getLogger(__name__)
OUT_OF_MEMORY = "Out of memory. Try a shorter input, a smaller batch, bfloat16, or a smaller model."

install_stack_dump()  # the stacks of a hung server, on request (also under a plain `streamlit run`)


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Show a user mistake or an out-of-memory as a message where the block draws; anything else goes on up to the
    page's (or fragment's) boundary."""
    try:
        yield
    except UserError as exc:
        st.error(plain(exc))
    except (MemoryError, RuntimeError) as exc:  # PyTorch's allocators raise RuntimeError (OutOfMemoryError is one)
        if not is_out_of_memory(exc):
            raise
        st.error(OUT_OF_MEMORY)


@contextlib.contextmanager
def error_boundary(where: str) -> Iterator[None]:
    """Everything a page or a fragment raises, as a message on the page (see the module docstring)."""
    try:
        yield
    except ScriptControlException:
        raise
    except UserError as exc:
        st.error(plain(exc))
    except Exception as exc:
        error_id = secrets.token_hex(3)
        log.exception("%s failed (error %s)", where, error_id)
        if is_out_of_memory(exc):
            st.error(f"{OUT_OF_MEMORY} (error {error_id})")
        else:
            st.error(f"Something went wrong (error {error_id}); the details are in the server log.")


_IN_FRAGMENT = contextvars.ContextVar("ulens_in_fragment", default=False)


def in_fragment() -> bool:
    """Whether the code running now is inside one of our fragments (drawn inline or rerun on its own)."""
    return _IN_FRAGMENT.get()


def fragment(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """`st.fragment` with the error boundary inside: a fragment's own rerun does not pass through the page's
    boundary, so without this its errors would reach Streamlit's handler. Used as `@fragment` or
    `@fragment(run_every=…)`. While it runs, `in_fragment()` is true."""

    def decorate(inner: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(inner)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            token = _IN_FRAGMENT.set(True)
            try:
                with error_boundary(f"fragment {inner.__qualname__}"):
                    return inner(*args, **kwargs)
            finally:
                _IN_FRAGMENT.reset(token)

        return st.fragment(guarded, **options)

    return decorate(function) if function is not None else decorate
