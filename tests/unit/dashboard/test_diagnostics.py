"""dashboard/diagnostics.py: a hung server, asked with a signal, says which sessions run a script and where the
app's own threads wait (the e2e tests attach this to every failing browser test)."""

from __future__ import annotations

import os
import signal
import threading
from types import SimpleNamespace

import pytest

from dashboard import diagnostics


def wait_in_the_app(release: threading.Event) -> None:
    release.wait(30)


def test_the_stacks_name_the_script_thread_and_leave_out_idle_ones():
    release = threading.Event()
    script = threading.Thread(target=wait_in_the_app, args=(release,), name="ScriptRunner.scriptThread")
    idle = threading.Thread(target=release.wait, args=(30,), name="idle-worker")
    script.start()
    idle.start()
    try:
        text = "\n".join(diagnostics.thread_stacks())
    finally:
        release.set()
        script.join()
        idle.join()
    assert "thread 'ScriptRunner.scriptThread':" in text and "in wait_in_the_app" in text
    assert "idle-worker" not in text  # only threading's own frames: not the app's code


def fake_session(name: str, alive: bool | None) -> SimpleNamespace:
    runner = None
    if alive is not None:
        release = threading.Event()
        thread = threading.Thread(target=release.wait, args=(30,))
        if alive:
            thread.start()
        runner = SimpleNamespace(_script_thread=thread, _requests=SimpleNamespace(_state="RERUN"), release=release)
    session = SimpleNamespace(id=name, _state="APP_IS_RUNNING" if alive else "APP_NOT_RUNNING", _scriptrunner=runner)
    return SimpleNamespace(session=session)


def test_each_session_says_whether_its_script_runs_and_what_is_pending():
    infos = [fake_session("aaaaaaaa-1", True), fake_session("bbbbbbbb-2", None)]
    manager = SimpleNamespace(list_sessions=lambda: infos, is_active_session=lambda name: name.startswith("a"))
    runtime = SimpleNamespace(_session_mgr=manager)
    try:
        lines = diagnostics.session_states(runtime)
    finally:
        infos[0].session._scriptrunner.release.set()
    assert lines == [
        "session aaaaaaaa: APP_IS_RUNNING, script runner alive, request RERUN, connected True",
        "session bbbbbbbb: APP_NOT_RUNNING, script runner none, request None, connected False",
    ]


def test_what_it_cannot_read_it_says_instead_of_failing():
    runtime = SimpleNamespace(_session_mgr=SimpleNamespace())  # a Streamlit whose internals moved
    (line,) = diagnostics.session_states(runtime)
    assert line.startswith("session states unavailable: AttributeError")


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_sigusr2_writes_the_state_between_its_markers(capfd):
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        diagnostics.install()
        os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs in this (main) thread before kill returns
        err = capfd.readouterr().err
    finally:
        signal.signal(signal.SIGUSR2, previous)
    lines = err.splitlines()
    report = lines[lines.index(diagnostics.BEGIN) + 1 : lines.index(diagnostics.END)]
    assert report[0].startswith(("no Streamlit runtime", "no browser sessions", "session "))
