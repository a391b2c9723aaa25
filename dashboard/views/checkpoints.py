"""Checkpoints: one prompt and answer under every checkpoint of every method at once — the answer's log-prob against
training step, the per-token shift as a token × model map, and the logit lens across checkpoints. Clicking a model
makes it the unlearned side of the pair on every page."""

from __future__ import annotations

import threading

import pandas as pd
import streamlit as st

from core.analyses.multi import (
    MAX_MODELS,
    CheckpointLens,
    ModelEntry,
    ModelSet,
    MultiProbeResult,
    demo_entries,
    lens_across,
    memory_plan,
    probe_many,
    run_entries,
)
from core.analyses.probe import ProbeRequest
from core.common.errors import UserError
from core.models import loading
from core.models.spec import DEMO_PREFIX, ModelSpec, resolve_spec
from core.present.figures.checkpoints import (
    answer_table,
    delta_heatmap,
    lens_heatmap,
    lens_reading,
    model_from_selection,
    trajectory_figure,
)
from dashboard.boundary import report_errors
from dashboard.exports import chart, table_download
from dashboard.plain import plain
from dashboard.question import question_inputs
from dashboard.state.pair import pair_key, require_pair, shared_model_job
from dashboard.state.selection import is_new_choice, use_as_unlearned
from dashboard.state.sidebar import sidebar

RESULT = "checkpoints_result"  # (models key, {"probe", "runs", "steps", "specs", "base"})
LENS = "checkpoints_lens"  # (models key, CheckpointLens dict)
NOTE = "checkpoints_note"  # the pair a click loaded, said once on the next run
TRAJECTORY_CHART = "checkpoints_trajectory"
_LOAD_LOCK = threading.Lock()  # one model set loaded at a time (memory)
Chosen = tuple[tuple[str, str, str | None, int | None], ...]  # (spec text, label, run, step) per model


@st.cache_resource(show_spinner=False, max_entries=1)
def load_set(base: str, chosen: Chosen, options: tuple) -> ModelSet:
    """One model set (the last one asked for) shared by every session; `options`: the pair key's load options."""
    dtype, device, trust, pickle = options[:4]
    spec_options = {"dtype": dtype, "device": device, "trust_remote_code": trust, "allow_unsafe_weights": pickle}
    entries = [ModelEntry(ModelSpec.parse(text, **spec_options), label, run, step) for text, label, run, step in chosen]
    with _LOAD_LOCK:
        return ModelSet.load(ModelSpec.parse(base, **spec_options), entries)


def spec_options(key: tuple) -> dict:
    return {"dtype": key[2], "device": key[3], "trust_remote_code": key[4], "allow_unsafe_weights": key[5]}


def choose_models(key: tuple) -> Chosen:
    """The demo's models (when the base is a demo model), typed specs and run folders; at most MAX_MODELS."""
    template = ModelSpec("x", **spec_options(key))
    chosen: list[tuple[str, str, str | None, int | None]] = []
    if key[0].strip().lower().startswith(DEMO_PREFIX):
        demo = {text: entry for text, entry in demo_entries(template, exclude=[key[0]])}
        picked = st.multiselect(
            "Demo models",
            list(demo),
            default=list(demo),
            key="checkpoints_demo",
            help="Every checkpoint of each built unlearning run, and the target and oracle",
        )
        chosen += [(text, demo[text].label, demo[text].run, demo[text].step) for text in picked]
    left, right = st.columns(2)
    specs = left.text_area(
        "More models, one SPEC per line",
        key="checkpoints_specs",
        height=90,
        help="Folder, hub id, adapter folder, SOURCE::adapter=DIR or demo:NAME",
    )
    runs = right.text_area(
        "Unlearning run folders, one per line",
        key="checkpoints_runs",
        height=90,
        help="A run's output folder: every checkpoint-<step>/ in it, in step order",
    )
    chosen += [(text, text, None, None) for text in (line.strip() for line in specs.splitlines()) if text]
    for run in (line.strip() for line in runs.splitlines()):
        if run:
            for entry in run_entries(run, template):
                chosen.append((entry.spec.source, entry.label, entry.run, entry.step))
    if len(chosen) > MAX_MODELS:
        raise UserError(f"{len(chosen)} models chosen; at most {MAX_MODELS} are probed at once")
    return tuple(chosen)


def memory_check(key: tuple, chosen: Chosen) -> None:
    """Say what holding the base and the chosen models costs; stop the page when they will not fit."""
    options = spec_options(key)
    specs = [resolve_spec(ModelSpec.parse(text, **options)) for text in [key[0], *(c[0] for c in chosen)]]
    device = loading.resolve_device(specs[0].device)
    plan = memory_plan(specs, device, loading.resolve_dtype(specs[0].dtype, device))
    st.caption(plain(f"Holding the base and {len(chosen)} model(s): {plan.text()}"))
    if plan.fits is False:
        st.error(
            plain(
                f"These {len(chosen)} models will not fit in memory, so they are not loaded. Choose fewer "
                "models or checkpoints, bfloat16, or adapter checkpoints on one base (loaded once)."
            )
        )
        st.stop()


def probe_all(key: tuple, chosen: Chosen, prompt: str, answer: str, chat: bool) -> None:
    """Load the set and probe the question under every model, keeping the result for this choice of models."""
    bar = st.progress(0.0, text="Loading the models…")
    with shared_model_job("checkpoints probe"):
        models = load_set(key[0], chosen, tuple(key[2:]))
        bar.progress(0.1, text=f"Probing {len(chosen)} models…")
        result = probe_many(
            models,
            ProbeRequest(prompt, answer or None),
            chat,
            progress=lambda f: bar.progress(0.1 + 0.9 * f, text="Probing…"),
        )
    bar.empty()
    stored = {
        "probe": result.to_dict(),
        "runs": [c[2] for c in chosen],
        "steps": [c[3] for c in chosen],
        "specs": [c[0] for c in chosen],
        "base": key[0],
    }
    st.session_state[RESULT] = (models_key(key, chosen), stored)


def lens_all(key: tuple, chosen: Chosen, prompt: str, answer: str, chat: bool) -> None:
    bar = st.progress(0.0, text="Reading every layer of every model…")
    with shared_model_job("checkpoints lens"):
        models = load_set(key[0], chosen, tuple(key[2:]))
        lens = lens_across(models, prompt, answer, chat, progress=lambda f: bar.progress(f, text="Reading layers…"))
    bar.empty()
    st.session_state[LENS] = (models_key(key, chosen), lens.to_dict())


def models_key(key: tuple, chosen: Chosen) -> tuple:
    """What a stored result depends on: the base, the load options and the models (not the unlearned side)."""
    return (key[0], *key[2:], chosen)


def contrast(specs: list[str], labels: list[str], index: int) -> None:
    """Make model `index` the unlearned side of the pair on every page."""
    if use_as_unlearned(specs[index]):
        st.session_state[NOTE] = f"{labels[index]} is now the unlearned model on every page (Probe, Layers, …)."
        st.rerun()


def draw_trajectory(stored: dict) -> None:
    """The clickable trajectory chart, the selectbox next to it, the answer table."""
    result = MultiProbeResult.from_dict(stored["probe"])
    figure = trajectory_figure(result, stored["runs"], stored["steps"], stored["base"])
    event = chart(figure, "checkpoint trajectory", key=TRAJECTORY_CHART, on_select="rerun", selection_mode="points")
    index = model_from_selection(figure, event["selection"]["points"]) if event else None
    if index is not None and is_new_choice("checkpoints", stored["specs"][index]):
        contrast(stored["specs"], result.models, index)
    left, right = st.columns([3, 1])
    picked = left.selectbox(
        "Model to contrast with the base",
        range(len(result.models)),
        key="checkpoints_pick",
        format_func=lambda i: result.models[i],
    )
    right.write("")
    if right.button("Use as the unlearned model", key="checkpoints_use"):
        contrast(stored["specs"], result.models, picked)
    frame = pd.DataFrame(answer_table(result, stored["runs"], stored["steps"]))
    st.dataframe(frame, hide_index=True, column_config={"step": st.column_config.NumberColumn(format="%d")})
    table_download(frame, "checkpoint answers", key="checkpoints_table")
    chart(delta_heatmap(result, stored["runs"], stored["steps"]), "checkpoint token shift", key="checkpoints_tokens")


def draw_lens(lens: CheckpointLens) -> None:
    runs = list(dict.fromkeys(run for run, step in zip(lens.runs, lens.steps, strict=True) if run and step is not None))
    run = st.selectbox("Run", runs, key="checkpoints_lens_run") if runs else None
    st.info(plain(lens_reading(lens, run)))
    chart(lens_heatmap(lens, run), "logit lens across checkpoints", key="checkpoints_lens_chart")


sidebar()
st.title("Checkpoints")
require_pair()
key = pair_key()
if note := st.session_state.pop(NOTE, None):
    st.success(plain(note))
chosen: Chosen = ()
with report_errors():
    chosen = choose_models(key)
    if chosen:
        memory_check(key, chosen)
if not chosen:
    st.info("Choose the models to compare: demo models, model specs or unlearning run folders.")
    st.stop()
prompt, answer, chat = question_inputs("checkpoints")
left, right = st.columns(2)
if left.button("Probe every model", type="primary", key="checkpoints_probe"):
    st.session_state.pop(RESULT, None)
    with report_errors():
        probe_all(key, chosen, prompt, answer, chat)
if right.button("Run the logit lens across checkpoints", key="checkpoints_lens_run_button"):
    st.session_state.pop(LENS, None)
    with report_errors():
        lens_all(key, chosen, prompt, answer, chat)
entry = st.session_state.get(RESULT)
if entry and entry[0] == models_key(key, chosen):
    with report_errors():
        draw_trajectory(entry[1])
lens_entry = st.session_state.get(LENS)
if lens_entry and lens_entry[0] == models_key(key, chosen):
    st.header("Logit lens across checkpoints")
    with report_errors():
        draw_lens(CheckpointLens.from_dict(lens_entry[1]))
