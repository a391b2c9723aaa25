"""Loading a model pair in the background, so no page waits for it to draw.

One `PairLoad` per pair (its load_pair arguments), shared by every browser session through st.cache_resource: the
first session that chooses a pair starts its thread, every other session that chooses the same pair follows the same
load (one copy in memory). The thread builds the demo stages the pair needs first (or follows the background build
`make run` started), then loads the two models under one process-wide lock, so two pairs never load at once (two
cold loads can exhaust memory). Sessions read its state (what it is doing, how far, since when) to draw progress,
and wait on it only where a page has nothing else to show.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.common.errors import UserError
from core.common.limits import is_out_of_memory
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from dashboard.state import demo

log = logging.getLogger(__name__)
_LOAD_LOCK = threading.Lock()  # two cold loads at once can exhaust memory: load in order
OUT_OF_MEMORY = "Out of memory while loading; choose bfloat16 or a smaller model."
LOAD_STEPS = 4  # messages ModelPair.load says for a pair: tokenizer, base, unlearned (or adapters), done
EXIT_WAIT_S = 60.0  # at interpreter exit, how long loads under way may still finish (see _finish_loads)
_RUNNING: weakref.WeakSet = weakref.WeakSet()  # loads whose thread runs


@dataclass(eq=False)  # compared (and hashed) by identity: one object per load
class PairLoad:
    """The background load of one pair. `state`: queued → building (demo stages) → waiting (another pair is
    loading) → loading → ready | failed; `fraction` is known while a demo stage builds and estimated from the
    steps while loading; `message` says what happens now."""

    key: tuple
    max_memory: int | None = None  # the sidebar's memory budget in bytes (None: the whole pair, or automatic)
    state: str = "queued"
    fraction: float = 0.0
    message: str = "queued"
    pair: ModelPair | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def base(self) -> str:
        return str(self.key[0])

    @property
    def unlearned(self) -> str:
        return str(self.key[1])

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def ready(self) -> bool:
        return self.done and self.pair is not None

    @property
    def failed(self) -> bool:
        return self.done and self.pair is None

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the load ended (True) or `timeout` seconds passed (False)."""
        return self._done.wait(timeout)

    def result(self) -> ModelPair:
        """The loaded pair (waiting for it), or the load's failure as a UserError."""
        self.wait()
        if self.pair is None:
            raise UserError(self.error or "the pair could not be loaded")
        return self.pair

    def start(self) -> PairLoad:
        _RUNNING.add(self)
        threading.Thread(target=self._run, name=f"ulens-load {self.base} | {self.unlearned}", daemon=True).start()
        return self

    def _say(self, state: str, message: str, fraction: float | None = None) -> None:
        self.state, self.message = state, message
        if fraction is not None:
            self.fraction = min(1.0, max(0.0, fraction))

    def _run(self) -> None:
        try:
            self._build_demo()
            self.pair = self._load()
            self._say("ready", "loaded", 1.0)
        except UserError as exc:
            self._fail(str(exc))
        except Exception as exc:  # a broken model folder must not take the app down
            if is_out_of_memory(exc):
                self._fail(OUT_OF_MEMORY)
            else:
                log.exception("loading the pair %s failed", self.key[:2])
                self._fail(f"Could not load the pair: {type(exc).__name__}: {exc}")
        finally:
            self.finished = time.monotonic()
            self._done.set()
            _RUNNING.discard(self)

    def _fail(self, error: str) -> None:
        self.error = error
        self._say("failed", error)

    def _build_demo(self) -> None:
        """The demo training stages the pair needs (following a background build when one runs)."""
        needed = demo.demo_stages_to_build([self.base, self.unlearned])
        if needed:
            self._say("building", f"building demo model(s) {', '.join(needed)}", 0.0)
            demo.build_demo(needed, lambda fraction, message: self._say("building", message, fraction))

    def _load(self) -> ModelPair:
        base, unlearned, dtype, device, trust_remote_code, allow_unsafe_weights = self.key
        options = {
            "dtype": dtype,
            "device": device,
            "trust_remote_code": trust_remote_code,
            "allow_unsafe_weights": allow_unsafe_weights,
        }
        if not _LOAD_LOCK.acquire(blocking=False):
            self._say("waiting", "waiting for another pair's load to finish", 0.0)
            _LOAD_LOCK.acquire()
        try:
            steps = iter(range(1, 100))
            self._say("loading", "loading the models", 0.0)

            def progress(message: str) -> None:
                self._say("loading", message, next(steps) / LOAD_STEPS * 0.95)

            specs = ModelSpec.parse(base, **options), ModelSpec.parse(unlearned, **options)
            if self.max_memory is None:
                return ModelPair.load(*specs, progress)
            return ModelPair.load(*specs, progress, max_memory=self.max_memory)
        finally:
            _LOAD_LOCK.release()

    def summary(self) -> dict[str, Any]:
        """What the progress panels show: the state, fraction, message and seconds so far."""
        return {"state": self.state, "fraction": self.fraction, "message": self.message, "elapsed": self.elapsed()}


def _finish_loads() -> None:
    """Let loads under way finish (for up to EXIT_WAIT_S) before the interpreter shuts down its thread pools: a
    daemon thread cut off inside a weight loader's pool aborts the process instead of exiting."""
    deadline = time.monotonic() + EXIT_WAIT_S
    for load in list(_RUNNING):
        load.wait(max(0.0, deadline - time.monotonic()))


# Registered with threading's own exit hooks, which run (latest first) before concurrent.futures shuts its pools.
getattr(threading, "_register_atexit", lambda function: None)(_finish_loads)


@st.cache_resource(show_spinner=False, max_entries=3)
def pair_load(
    base: str,
    unlearned: str,
    dtype: str,
    device: str,
    trust_remote_code: bool,
    allow_unsafe_weights: bool,
    max_memory: int | None,
) -> PairLoad:
    """The load of one pair (and memory budget), started by the first session that asks and shared by every other
    one (the cache's own lock makes sessions asking at once get this one object). The two opt-ins are the
    operator's (`operator_opt_ins()`, from the environment); the sidebar never takes them from the browser.
    Every argument is passed on every call, `max_memory` too: st.cache_resource keys on the arguments as given."""
    key = (base, unlearned, dtype, device, trust_remote_code, allow_unsafe_weights)
    return PairLoad(key, max_memory).start()


def forget_failed(load: PairLoad) -> None:
    """Drop a failed load from the cache, so choosing the pair again tries again (a fixed folder, freed memory)."""
    if load.failed:
        pair_load.clear(*load.key, load.max_memory)
