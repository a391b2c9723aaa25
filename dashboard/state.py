"""What every page shares: the loaded model pair (cached across sessions, loaded one at a time) and errors."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import streamlit as st
import torch

from core.common.errors import UserError
from core.common.limits import is_out_of_memory
from core.models.pair import (
    ALLOW_PICKLE_ENV,
    DEFAULT_BASE,
    DEFAULT_UNLEARNED,
    DEMO_PREFIX,
    TRUST_REMOTE_CODE_ENV,
    ModelPair,
    ModelSpec,
    model_job,
    operator_opt_ins,
)
from core.unlearn.demo import DEFAULT_UNLEARNED as DEMO_DEFAULT_RUN
from core.unlearn.demo import UNLEARNED as DEMO_UNLEARNED
from core.unlearn.demo import DemoExperiment, default_recipe, demo_status
from dashboard.boundary import fragment
from dashboard.plain import plain

log = logging.getLogger(__name__)
_LOAD_LOCK = threading.Lock()  # two cold loads at once can exhaust memory: load in order
AUTOLOAD_ENV = "ULENS_AUTOLOAD"  # 0: do not load the default pair when a session starts (wait for "Load pair")
DTYPES = ["auto", "float32", "bfloat16", "float16"]
DEVICES = ["auto", "cpu", "cuda", "mps"]
DEMO_REFRESH_S = 2.0  # how often the sidebar re-reads status.json while the demo experiment builds
MB = 2**20
INTERIM_PAIR = ("demo:base", "demo:target")  # what a first start opens while the default unlearned model builds


@st.cache_resource(show_spinner=False, max_entries=3)
def load_pair(
    base: str, unlearned: str, dtype: str, device: str, trust_remote_code: bool, allow_unsafe_weights: bool
) -> ModelPair:
    """One pair per (specs, dtype, device), shared by every browser session. The two opt-ins are the operator's
    (`operator_opt_ins()`, from the environment); the sidebar never takes them from the browser."""
    options = {
        "dtype": dtype,
        "device": device,
        "trust_remote_code": trust_remote_code,
        "allow_unsafe_weights": allow_unsafe_weights,
    }
    with _LOAD_LOCK:
        return ModelPair.load(ModelSpec.parse(base, **options), ModelSpec.parse(unlearned, **options))


@contextlib.contextmanager
def shared_model_job(job: str) -> Iterator[None]:
    """Run a block of work on the shared pair under the name `job` ("attribution", "probe", …). While another
    session's job holds a side the block needs, a line where the result will appear says "waiting for another
    session's <job>…" instead of the page hanging silently; the line goes when the side is free. Other sessions
    that wait for this block see `job` in their line."""
    slot = st.empty()

    def waiting(holder: str | None, blocked: bool) -> None:
        if blocked:
            slot.caption(f"⏳ waiting for another session's {plain(holder or 'work on the model')}…")
        else:
            slot.empty()

    try:
        with model_job(job, on_wait=waiting):
            yield
    finally:
        slot.empty()


@contextlib.contextmanager
def busy_note(message: str) -> Iterator[None]:
    """A still "working" line where the result will appear, removed when the work ends. Used instead of
    st.spinner for the Probe page's sub-second passes: a browser on the same two cores re-rasterises a spinning
    icon every frame, and that CPU comes out of the forward pass (docs/PERFORMANCE.md, Dashboard). The header's
    own "Running…" indicator still moves."""
    slot = st.empty()
    slot.caption(f"⏳ {message}")
    try:
        yield
    finally:
        slot.empty()


def pair_key() -> tuple | None:
    return st.session_state.get("pair_key")


def current_pair() -> ModelPair | None:
    """The pair chosen in the sidebar (from the cache), or None before one is loaded."""
    key = pair_key()
    if key is None:
        return None
    try:
        return load_pair(*key)
    except UserError:
        return None


def require_pair() -> ModelPair:
    """The loaded pair, or stop the page with a hint to load one."""
    pair = current_pair()
    if pair is None:
        st.info("Load a model pair in the sidebar first.")
        st.stop()
    return pair


def _chosen(position: int, default: str) -> str:
    """The value of the loaded pair's key at `position`, so the sidebar shows what is loaded on every page."""
    key = pair_key()
    return key[position] if key else default


def memory_usage(pair: ModelPair) -> dict[str, float]:
    """MB held now: the pair's weights, this process's resident memory and, on CUDA, allocated/reserved memory."""
    usage = {"parameters": pair.parameter_bytes() / MB, "process_rss": psutil.Process().memory_info().rss / MB}
    if torch.device(pair.device).type == "cuda":
        usage["cuda_allocated"] = torch.cuda.memory_allocated(pair.device) / MB
        usage["cuda_reserved"] = torch.cuda.memory_reserved(pair.device) / MB
    return usage


def memory_text(usage: dict[str, float]) -> str:
    text = f"{usage['parameters']:,.1f} MB of weights · process RSS {usage['process_rss']:,.0f} MB"
    if "cuda_allocated" in usage:
        text += f" · CUDA {usage['cuda_allocated']:,.0f} MB allocated, {usage['cuda_reserved']:,.0f} MB reserved"
    return text


def demo_stages_to_build(texts: list[str]) -> list[str]:
    """The demo training stages the typed specs need that are not built yet (bad names are left to load_pair,
    which reports them)."""
    experiment = DemoExperiment()
    stages = {stage.name for stage in experiment.recipe.stages}
    needed = []
    for text in texts:
        source = ModelSpec.parse(text).source
        if not source.startswith(DEMO_PREFIX):
            continue
        name = source[len(DEMO_PREFIX) :].split("@")[0].strip().lower()
        name = DEMO_DEFAULT_RUN if name == DEMO_UNLEARNED else name
        if name in stages and name not in needed and not experiment.is_built(name):
            needed.append(name)
    return needed


def build_demo(names: list[str], show: Callable[[float, str], None]) -> None:
    """Build the named demo stages, reporting progress (fraction, message). When another process is building the
    experiment (`make run` starts one in the background), follow its status.json until the stages are there
    instead of queueing behind its lock with a silent bar; build here otherwise."""
    experiment = DemoExperiment()
    while not all(experiment.is_built(name) for name in names):
        status = read_demo_status()
        if status is None or status["state"] != "building" or status.get("pid") == os.getpid():
            experiment.build(names, progress=lambda update: show(update["fraction"], update["message"]))
            return
        show(float(status["fraction"]), f"{status['message']} (background build, process {status.get('pid')})")
        time.sleep(DEMO_REFRESH_S / 2)


def is_demo_pair(key: tuple | None = None) -> bool:
    key = key or pair_key()
    return bool(key) and all(str(text).strip().lower().startswith(DEMO_PREFIX) for text in key[:2])


def chat_default() -> bool:
    """The chat-template toggles' default: the demo's own format for demo models (they were taught without the
    chat template), on for everything else (instruct models expect it)."""
    return default_recipe().chat if is_demo_pair() else True


def first_start_key(key: tuple) -> tuple:
    """The pair a session opens by itself. While a background build is still making the default unlearned model,
    open base vs target (ready first, a couple of minutes after `make run`) instead of waiting for it."""
    if tuple(key[:2]) != (DEFAULT_BASE, DEFAULT_UNLEARNED):
        return key
    status = read_demo_status()
    building = status is not None and status["state"] == "building" and status.get("pid") != os.getpid()
    if building and demo_stages_to_build([DEFAULT_UNLEARNED]):
        st.session_state["interim_pair"] = True
        return (*INTERIM_PAIR, *key[2:])
    return key


def read_demo_status() -> dict[str, Any] | None:
    """status.json of the demo experiment, or None when it cannot be read (then the sidebar shows nothing)."""
    try:
        return demo_status()
    except (UserError, OSError, ValueError):
        log.exception("reading the demo status failed")
        return None


def draw_demo_status(status: dict[str, Any]) -> None:
    """A progress bar while the demo builds; a one-line state otherwise."""
    models = ", ".join(status.get("models") or []) or "none"
    state = status["state"]
    if state == "building":
        st.progress(float(status["fraction"]), text=f"Building the demo experiment: {plain(status['message'])}")
        st.caption(plain(f"stage {status['stage']} · {status['fraction']:.0%} · ready: {models}"))
    elif status.get("complete"):
        st.caption(plain(f"Demo experiment built ({status.get('recipe', '')}): {models}"))
    elif state in ("failed", "interrupted"):
        st.warning(plain(f"Demo build {state}: {status['message']}"))
    else:
        st.caption(f"{plain(f'Demo experiment {state}; ready: {models}.')} `python -m core demo` builds the rest.")


@fragment(run_every=DEMO_REFRESH_S)
def demo_progress_live() -> None:
    """Re-read status.json every few seconds while a build (here, in another session or the CLI) runs."""
    status = read_demo_status()
    if status is None or status["state"] != "building":
        st.rerun()  # the build ended: redraw the app once, without polling
    ready = DEMO_UNLEARNED in (status.get("models") or [])
    if st.session_state.get("interim_pair") and ready and not st.session_state.get("interim_ready"):
        st.session_state["interim_ready"] = True
        st.rerun()  # the default pair can be opened now: redraw the sidebar's notice as a button
    draw_demo_status(status)


def demo_panel() -> None:
    status = read_demo_status()
    if status is None:
        return
    st.subheader("Demo experiment")
    if status["state"] == "building":
        demo_progress_live()
    else:
        draw_demo_status(status)


def load_chosen(key: tuple) -> None:
    """Load the pair (building missing demo stages first, with a progress bar), and report what went wrong."""
    with st.status("Loading model pair…", expanded=False) as status:
        try:
            needed = demo_stages_to_build(list(key[:2]))
            if needed:
                status.update(label=f"Building demo model(s) {', '.join(needed)}…", expanded=True)
                bar = st.progress(0.0, text="starting the demo build")
                build_demo(needed, lambda fraction, message: bar.progress(min(1.0, fraction), text=plain(message)))
            load_pair(*key)
            st.session_state["pair_key"] = key
            status.update(label="Pair loaded", state="complete", expanded=False)
        except UserError as exc:
            status.update(label="Could not load the pair", state="error")
            st.error(plain(exc))
        except Exception as exc:  # a broken model folder must not take the app down
            if is_out_of_memory(exc):
                status.update(label="Out of memory", state="error")
                st.error("Out of memory while loading; choose bfloat16 or a smaller model.")
                return
            log.exception("loading the pair failed")
            status.update(label="Could not load the pair", state="error")
            st.error(plain(f"Could not load the pair: {type(exc).__name__}: {exc}"))


def interim_pair_notice() -> None:
    """After a first start opened base vs target: say why, and offer the default pair once it is built."""
    key = pair_key()
    if not st.session_state.get("interim_pair") or not key or tuple(key[:2]) != INTERIM_PAIR:
        return
    if demo_stages_to_build([DEFAULT_UNLEARNED]):
        st.info(
            f"Opened {INTERIM_PAIR[0]} vs {INTERIM_PAIR[1]} while {DEFAULT_UNLEARNED} is still being built "
            "(progress below)."
        )
    elif st.button(f"Open {DEFAULT_BASE} vs {DEFAULT_UNLEARNED}", type="primary", key="open_default_pair"):
        st.session_state.pop("interim_pair", None)
        load_chosen((DEFAULT_BASE, DEFAULT_UNLEARNED, *key[2:]))
        st.rerun()


KEPT_INPUTS = (
    *(f"{page}_{name}" for page in ("probe", "lens", "attribution") for name in ("prompt", "answer", "chat")),
    *("probe_topk", "probe_view", "probe_new", "probe_sample", "probe_temperature", "probe_seed"),
)  # widget keys only: other session-state keys are never forgotten


def keep_inputs() -> None:
    """Streamlit forgets a widget's value once a run goes by without that widget (another page): writing the
    values back at the top of every page keeps each page's prompt, answer and settings across page switches."""
    for key in KEPT_INPUTS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def opt_ins_text(opt_ins: dict[str, bool]) -> str:
    """The read-only sidebar line: whether model code and pickle weights may run, and who changes that (whoever
    starts the server; a checkbox here would let anyone who reaches the page switch them on)."""
    state = {True: "allowed", False: "off"}
    return (
        f"Remote model code: **{state[opt_ins['trust_remote_code']]}** · "
        f"pickle weights: **{state[opt_ins['allow_unsafe_weights']]}**. Set when the server starts "
        f"(`{TRUST_REMOTE_CODE_ENV}=1`, `{ALLOW_PICKLE_ENV}=1`; `make run TRUST_REMOTE_CODE=1 ALLOW_PICKLE=1`)."
    )


def sidebar() -> None:
    """Pick the pair (demo by default, or folders / hub ids / adapters), load it, show what is loaded and how
    much memory it takes, and the demo experiment's build progress."""
    keep_inputs()
    with st.sidebar:
        st.header("Model pair")
        with st.form("pair"):
            base = st.text_input(
                "Base model",
                value=_chosen(0, DEFAULT_BASE),
                help="Folder, hub id, .gguf file, PEFT adapter folder, or demo:NAME",
            )
            unlearned = st.text_input(
                "Unlearned model",
                value=_chosen(1, DEFAULT_UNLEARNED),
                help="Same forms; SOURCE::adapter=DIR puts an adapter on SOURCE",
            )
            left, right = st.columns(2)
            dtype = left.selectbox("dtype", DTYPES, index=DTYPES.index(_chosen(2, "auto")))
            device = right.selectbox("device", DEVICES, index=DEVICES.index(_chosen(3, "auto")))
            opt_ins = operator_opt_ins()
            st.caption(opt_ins_text(opt_ins))
            submitted = st.form_submit_button("Load pair", type="primary")
        autoload = st.session_state.get("autoload", os.environ.get(AUTOLOAD_ENV, "1") != "0")
        chosen = (
            base.strip(),
            unlearned.strip(),
            dtype,
            device,
            opt_ins["trust_remote_code"],
            opt_ins["allow_unsafe_weights"],
        )
        if submitted:
            st.session_state["autoload"] = False
            st.session_state.pop("interim_pair", None)
            load_chosen(chosen)
        elif pair_key() is None and autoload:
            st.session_state["autoload"] = False
            load_chosen(first_start_key(chosen))
        interim_pair_notice()
        pair = current_pair()
        if pair is not None:
            info = pair.describe()
            st.caption(
                f"**base** {plain(info['base'])}  \n**unlearned** {plain(info['unlearned'])}  \n"
                f"{info['device']} · {info['dtype']}{' · one shared backbone' if info['shares_backbone'] else ''}"
            )
            st.caption(f"Memory: {memory_text(memory_usage(pair))}")
        demo_panel()
