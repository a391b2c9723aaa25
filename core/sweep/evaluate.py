"""`evaluate --ray`: every model or checkpoint is one Ray task; the results land in the usual layout.

The driver resolves the models (names, steps, cache identities: the same code as a single-process run), sends one
task per model with its memory estimate, and writes each model's TOFU_EVAL.json / TOFU_SUMMARY.json as soon as its
numbers are in and the oracle's are too (forget quality needs the oracle's truth ratios, so the oracle's task is
submitted first). The files are those `core.evaluation.evaluate.evaluate` writes for the same models: the per-model
numbers come from the same `evaluate_model`, the derived ones from the same `finish_evaluation`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.common.cache import content_hash
from core.common.errors import UserError
from core.data.qa import SplitData
from core.evaluation.cache import CODE_VERSION
from core.evaluation.candidates import Candidate, as_eval_model, dataset_hash, to_candidate
from core.evaluation.derived import OracleReference
from core.evaluation.evaluate import (
    batch_count,
    evaluate_candidate,
    finish_evaluation,
    oracle_is_spec,
    oracle_reference,
    oracle_target,
)
from core.evaluation.loading import ModelLoader
from core.evaluation.result import EvalResult
from core.evaluation.settings import EvalModel, EvalSettings, ModelInput
from core.models.spec import ModelSpec
from core.sweep.backend import Outcome, Task, describe_failures, run_tasks
from core.sweep.cluster import ClusterSettings
from core.sweep.specs import run_device, task_memory

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """The evaluations that finished (an EvalResult, as a single-process run returns) and the tasks that failed."""

    result: EvalResult
    failures: list[tuple[str, str]] = field(default_factory=list)  # (model label, one-line reason)

    def failure_message(self) -> str | None:
        return describe_failures(self.failures)


def plan_candidate(entry: EvalModel, gpus: float) -> Candidate:
    """A model resolved on the driver as `evaluate` resolves it, without touching the driver's devices (a head
    node without a GPU can plan a GPU sweep); its spec carries the device its task will use."""
    if entry.spec is None:
        raise UserError("a sweep evaluates model specs (folders, demo:NAME, …), not models loaded in this process")
    device = run_device(entry.spec, gpus)
    candidate = to_candidate(dataclasses.replace(entry, spec=dataclasses.replace(entry.spec, device="cpu")))
    spec = dataclasses.replace(candidate.source.spec, device=device)
    candidate.source = dataclasses.replace(candidate.source, spec=spec)
    candidate.identity = {**candidate.identity, "spec": dataclasses.asdict(spec), "device": device}
    return candidate


def evaluate_work(candidate: Candidate, shared: tuple[SplitData, EvalSettings], report: Any) -> dict[str, Any]:
    """One model's EVAL entries (runs in a Ray worker): load it, score every split, report the batches done."""
    dataset, settings = shared
    total = max(1, batch_count(dataset, settings))
    done = [0]

    def tick() -> None:
        done[0] += 1
        report(done[0] / total)

    loader = ModelLoader()
    try:
        return evaluate_candidate(candidate, loader, dataset, settings, tick)  # as `evaluate` does for each model
    finally:
        loader.close()


def _plan_all(entries: list[EvalModel], gpus: float) -> tuple[list[Candidate], list[tuple[str, str]]]:
    candidates, failures = [], []
    for entry in entries:
        try:
            candidates.append(plan_candidate(entry, gpus))
        except UserError as exc:
            failures.append((entry.name or (entry.spec.source if entry.spec else "?"), str(exc)))
    labels = [c.label for c in candidates]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"several models are named {', '.join(repeated)}; give each its own name")
    return candidates, failures


def _oracle(
    oracle: ModelInput | Path | None, candidates: list[Candidate], gpus: float
) -> tuple[str | None, Path | None]:
    """(evaluated model's name, results folder) as `evaluate` finds them; a spec becomes one more task."""
    if isinstance(oracle, str) and not any(c.name == oracle for c in candidates) and oracle_is_spec(oracle):
        oracle = EvalModel(spec=ModelSpec.parse(oracle))
    if isinstance(oracle, ModelSpec | EvalModel):
        extra = plan_candidate(as_eval_model(oracle), gpus)
        if not any(c.label == extra.label for c in candidates):
            candidates.append(extra)
        return extra.name, None
    return oracle_target(oracle, candidates)


class _Writer:
    """Writes each model's result folder as soon as its numbers and the oracle reference are both in."""

    def __init__(self, candidates: list[Candidate], oracle: tuple[str | None, Path | None], out_dir: Path) -> None:
        self.by_label = {c.label: c for c in candidates}
        self.oracle_name, self.oracle_folder = oracle
        self.out_dir = out_dir
        self.raw: dict[str, tuple[Candidate, dict[str, Any]]] = {}
        self.skipped: set[str] = set()
        self.written: dict[str, Any] = {}
        self.waiting_for = {c.label for c in candidates if self.oracle_name and c.name == self.oracle_name}

    def reference(self) -> OracleReference | None:
        return oracle_reference(self.oracle_name, self.oracle_folder, self.raw)

    def __call__(self, outcome: Outcome) -> None:
        if outcome.state == "failed":
            return
        label = outcome.task.label
        self.raw[label] = (self.by_label[label], outcome.result)
        if outcome.state == "skipped":
            self.skipped.add(label)
        self.waiting_for.discard(label)
        if not self.waiting_for:
            self.write_ready(self.reference())

    def write_ready(self, reference: OracleReference | None) -> None:
        for label, raw in self.raw.items():
            if label not in self.written:
                self.written[label] = finish_evaluation(raw, reference, label in self.skipped, self.out_dir)


def evaluate_sweep(
    models: Sequence[ModelInput],
    dataset: SplitData,
    *,
    out_dir: Path | str,
    cluster: ClusterSettings | None = None,
    oracle: ModelInput | Path | None = None,
    settings: EvalSettings | None = None,
    show: bool = True,
    recompute: bool = False,
) -> SweepResult:
    """`evaluate` with each model as a Ray task: the same result files under `out_dir`, written as they land; a
    model whose task fails is reported (SweepResult.failures) while the others finish. A rerun skips every model
    whose numbers `<out>/.sweep/` already holds for the same files, data and settings (none with `recompute`)."""
    settings = settings or EvalSettings()
    cluster = cluster or ClusterSettings()
    if not dataset.splits():
        raise UserError("the dataset has no QA split to evaluate on")
    candidates, failures = _plan_all([as_eval_model(m) for m in models], cluster.gpus)
    target = _oracle(oracle, candidates, cluster.gpus)
    if not candidates:
        raise UserError("no model to evaluate" + (f": {failures[0][0]}: {failures[0][1]}" if failures else ""))
    data = dataset_hash(dataset)
    tasks = [
        Task(
            key=content_hash("evaluate", CODE_VERSION, c.label, c.identity, data, settings.cache_fields()),
            label=c.label,
            payload=c,
            memory=task_memory([c.source.spec]),
            priority=0 if target[0] and c.name == target[0] else 1,
        )
        for c in candidates
    ]
    writer = _Writer(candidates, target, Path(out_dir))
    outcomes = run_tasks(tasks, evaluate_work, (dataset, settings), Path(out_dir), cluster, "evaluate",
                         writer, show=show, recompute=recompute)  # fmt: skip
    failures += [(o.task.label, o.error or "failed") for o in outcomes if o.state == "failed"]
    reference = writer.reference() if not writer.waiting_for else None
    writer.write_ready(reference)
    evaluations = [writer.written[c.label] for c in candidates if c.label in writer.written]
    return SweepResult(EvalResult(evaluations, settings, reference.name if reference else None), failures)
