"""The Checkpoints view of a report: one prompt and answer under a base and many models (every checkpoint of each
unlearning run, the target and the oracle), as the Checkpoints page shows it — the answer's log-prob against
training step, the per-token Δ as a token × model map, and the logit lens across checkpoints (layer × step).

The numbers are core.analyses.multi's (probe_many, lens_across); the figures core.present.figures.checkpoints'.
Model labels are the set's labels with any absolute local path cut to its last component (a report never shows
local folders)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from core.analyses.multi import CheckpointLens, ModelSet, MultiProbeResult, lens_across, probe_many
from core.analyses.probe import ProbeRequest
from core.common.errors import UserError
from core.present.figures.checkpoints import (
    answer_table,
    delta_heatmap,
    lens_heatmap,
    lens_reading,
    ordered_models,
    trajectory_figure,
)
from core.present.figures.common import esc
from core.present.names import scrub_paths
from core.present.report.parts import Chart, Table

log = logging.getLogger(__name__)


@dataclass
class CheckpointsView:
    """One prompt + answer across many models: `probe` (base vs each model), each model's run and step (None: a
    single model such as the target or oracle, drawn as a reference line), the base's name, and the lens across the
    models when it was asked for."""

    probe: MultiProbeResult
    runs: list[str | None]
    steps: list[int | None]
    base: str
    lens: CheckpointLens | None = None

    def __post_init__(self) -> None:
        count = len(self.probe.models)
        if not count or len(self.runs) != count or len(self.steps) != count:
            raise UserError("a checkpoints view needs one run and one step (or none) per model probed")
        lens = self.lens
        if lens is not None and (
            lens.models != self.probe.models
            or (lens.prompt, lens.answer) != (self.probe.results[0].prompt, self.probe.results[0].answer)
        ):
            raise UserError("the logit lens across checkpoints was run on other models or another question")
        self.base = scrub_paths(self.base)
        self.runs = [scrub_paths(run) if run else None for run in self.runs]
        self.probe = MultiProbeResult([scrub_paths(m) for m in self.probe.models], self.probe.results)
        if lens is not None:
            self.lens = replace(lens, models=list(self.probe.models), runs=list(self.runs), steps=list(self.steps))

    @property
    def prompt(self) -> str:
        return self.probe.results[0].prompt

    @property
    def answer(self) -> str:
        return self.probe.results[0].answer or ""

    def lens_runs(self) -> list[str | None]:
        """The runs the lens map is drawn for (each run's checkpoints by step); [None] (every model) without runs."""
        if self.lens is None:
            return []
        runs = [run for run, step in zip(self.lens.runs, self.lens.steps, strict=True) if run and step is not None]
        return list(dict.fromkeys(runs)) or [None]

    def lens_readings(self) -> list[tuple[str | None, str]]:
        """(run, the lens map's reading in words) per lens map; plain text, escape it."""
        return [(run, lens_reading(self.lens, run)) for run in self.lens_runs()] if self.lens else []

    def charts(self, prefix: str) -> list[Chart]:
        """The trajectory, the token × model map and one lens map per run; `prefix` names them ("checkpoints-1")."""
        trajectory = trajectory_figure(self.probe, self.runs, self.steps, self.base)
        trajectory.update_layout(title="Answer log-prob across checkpoints")
        charts = [
            Chart(f"{prefix}-trajectory", "Answer log-prob across checkpoints", trajectory),
            Chart(f"{prefix}-token-shift", "Per-token Δ log-prob, token × model",
                  delta_heatmap(self.probe, self.runs, self.steps)),
        ]  # fmt: skip
        for k, run in enumerate(self.lens_runs()):
            name = f"{prefix}-lens-{k + 1}"
            title = f"Logit lens across checkpoints{f' of {run}' if run else ''}"
            charts.append(Chart(name, title, lens_heatmap(self.lens, run)))
        return charts

    def table(self, name: str) -> Table:
        """One row per model (each run's checkpoints by step, then the single models): answer log-prob, Δ against
        the base, probability."""
        rows = answer_table(self.probe, self.runs, self.steps)
        frame = pd.DataFrame([rows[i] for i in ordered_models(self.runs, self.steps)])
        frame = frame.astype({"step": "Int64"})
        reference = frame["run"].isna().tolist()
        return Table(name, "Checkpoints: the answer's log-prob under every model", frame, reference)

    def token_table(self, name: str) -> Table:
        """Δ log-prob of every answer token (columns, by position) under every model (rows): the heatmap's numbers."""
        order = ordered_models(self.runs, self.steps)
        tokens = self.probe.results[0].tokens
        columns = [f"{t.position}: {t.token}" for t in tokens]
        frame = pd.DataFrame(
            [[self.probe.models[i], *(t.delta for t in self.probe.results[i].tokens)] for i in order],
            columns=["model", *columns],
        )
        return Table(name, "Checkpoints: per-token Δ log-prob", frame)

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe.to_dict(), "runs": self.runs, "steps": self.steps, "base": self.base,
            "lens": self.lens.to_dict() if self.lens is not None else None,
        }  # fmt: skip


def checkpoints_view(
    models: ModelSet,
    request: ProbeRequest,
    base: str,
    chat: Any = False,
    with_lens: bool = False,
    progress: Callable[[float], None] | None = None,
) -> CheckpointsView:
    """Probe `request` under every model of the set (and run the lens across them when `with_lens`; it needs an
    answer). `base` names the base in the report; `chat` is the template as for core.analyses.probe.score."""
    if not request.answer:
        raise UserError(f"the checkpoints view needs an answer: write it as 'prompt|answer' ({request.prompt!r})")
    say = progress or (lambda fraction: None)
    share = 0.5 if with_lens else 1.0
    probe = probe_many(models, request, chat, progress=lambda f: say(share * f))
    lens = None
    if with_lens:
        lens = lens_across(models, request.prompt, request.answer, chat, progress=lambda f: say(0.5 + 0.5 * f))
    runs = [entry.run for entry in models.entries]
    steps = [entry.step for entry in models.entries]
    return CheckpointsView(probe, runs, steps, base, lens)


def view_from_page(stored: dict[str, Any], lens: dict[str, Any] | None = None) -> CheckpointsView:
    """The view from what the dashboard's Checkpoints page keeps in the session (its probe result, the models'
    runs and steps, the base's spec as typed, and its lens result when it ran one for the same models)."""
    return CheckpointsView(
        MultiProbeResult.from_dict(stored["probe"]), list(stored["runs"]), list(stored["steps"]), str(stored["base"]),
        CheckpointLens.from_dict(lens) if lens else None,
    )  # fmt: skip


def heading(view: CheckpointsView) -> str:
    """The view's models in words (for the section's caption): escaped."""
    runs = list(dict.fromkeys(run for run in view.runs if run))
    singles = [view.probe.models[i] for i, run in enumerate(view.runs) if run is None]
    parts = [f"{len(view.probe.models)} model(s) against the base {view.base}"]
    if runs:
        parts.append(f"checkpoints of {', '.join(runs)}")
    if singles:
        parts.append(f"single models (reference lines): {', '.join(singles)}")
    return esc("; ".join(parts))
