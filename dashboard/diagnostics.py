"""Where a hung server waits, on request, without stopping it (both write to the server's log, i.e. its stderr):

- `kill -USR1 <server pid>`: every thread's Python stack, written by faulthandler from C, so it answers even when
  the interpreter itself is stuck.
- `kill -USR2 <server pid>` (servers started with `python -m dashboard.serve`, as `make run` does): each browser
  session's state as Streamlit's runtime sees it (is its script running, is a rerun or stop pending) and the stacks
  of the threads that run the app's own code, by thread name. Written from Python, between two marker lines.

The e2e tests send both to every running app when a browser test fails (tests/e2e/conftest.py).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import Any

BEGIN = "=== ulens server state ==="
END = "=== end of ulens server state ==="
OWN_CODE = ("/dashboard/", "/core/", "scriptrunner", "/torch/", "/transformers/")
FRAMES_PER_THREAD = 14


def install_stack_dump() -> None:
    """SIGUSR1: every thread's stack (any thread may call this; registering twice is harmless)."""
    if hasattr(signal, "SIGUSR1"):  # not on Windows
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def install() -> None:
    """SIGUSR1 as above, and SIGUSR2: server_state() (a Python handler, so only from the main thread)."""
    install_stack_dump()
    if hasattr(signal, "SIGUSR2") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR2, _write_state)


def _write_state(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write(f"{BEGIN}\n{server_state()}\n{END}\n")
    sys.stderr.flush()


def thread_stacks(frames: dict[int, FrameType] | None = None) -> list[str]:
    """The threads whose stacks pass through the app's code (or Streamlit's script runner), innermost frames last."""
    frames = sys._current_frames() if frames is None else frames
    lines = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is None or thread is threading.current_thread():  # not the thread writing this report
            continue
        stack = traceback.format_stack(frame)
        if not thread.name.startswith("ScriptRunner") and not any(part in "".join(stack) for part in OWN_CODE):
            continue
        lines.append(f"thread {thread.name!r}:")
        lines.extend(entry.rstrip("\n") for entry in stack[-FRAMES_PER_THREAD:])
    return lines


def session_states(runtime: Any = None) -> list[str]:
    """One line per browser session: Streamlit's app state, whether its script thread is alive, the pending
    request. Reads Streamlit's private attributes: what it cannot read, it says."""
    try:
        if runtime is None:
            from streamlit.runtime import Runtime

            if not Runtime.exists():
                return ["no Streamlit runtime in this process"]
            runtime = Runtime.instance()
        lines = []
        manager = runtime._session_mgr
        for info in manager.list_sessions():
            session = info.session
            runner = getattr(session, "_scriptrunner", None)
            thread = getattr(runner, "_script_thread", None)
            requests = getattr(getattr(runner, "_requests", None), "_state", None)
            lines.append(
                f"session {session.id[:8]}: {getattr(session, '_state', '?')}, script runner "
                f"{'none' if runner is None else ('alive' if thread is not None and thread.is_alive() else 'idle')}, "
                f"request {requests}, connected {manager.is_active_session(session.id)}"
            )
        return lines or ["no browser sessions"]
    except Exception as exc:  # a diagnostic must not fail where it is needed most
        return [f"session states unavailable: {exc!r}"]


def server_state() -> str:
    return "\n".join([*session_states(), *thread_stacks()])
