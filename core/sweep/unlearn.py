"""`unlearn --ray`: several methods and seeds at once, one Ray task per (method, seed), each training into its own
run folder with checkpoints. A task whose worker dies is run again and resumes from its last complete checkpoint
(core.unlearn.checkpoints); a rerun of the sweep skips every run that finished."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from core.common.cache import content_hash, file_hash
from core.common.errors import UserError
from core.models.spec import ModelSpec, resolve_spec
from core.sweep.backend import Outcome, Task, run_tasks
from core.sweep.cluster import ClusterSettings
from core.sweep.specs import TRAINING_STATE_FACTOR, run_device, spec_fingerprint, task_memory
from core.unlearn.methods import get_method
from core.unlearn.trainer import TrainConfig, train

RESULT_VERSION = "1"
LORA_TRAINING_FACTOR = 1.5  # a LoRA run: the frozen weights, the adapter's few parameters and their optimizer state


@dataclass(frozen=True)
class UnlearnJob:
    """What every run of the sweep shares: the starting model, the data files, the loop and the LoRA settings."""

    base: str
    device: str
    forget: Path
    retain: Path | None
    refusals: Path | None
    config: TrainConfig
    lora: tuple[int, float, str] | None  # (rank, alpha, target modules); None trains every parameter


@dataclass(frozen=True)
class RunSpec:
    """One run: a method with its options, a seed, and the folder its checkpoints go to."""

    method: str
    options: dict[str, Any]
    seed: int
    out: str

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.seed}"


def unlearn_work(run: RunSpec, job: UnlearnJob, report: Any) -> dict[str, Any]:
    """Train one run (in a Ray worker) with the CLI's own loaders; resumes from the run folder's checkpoints."""
    from core.cli.unlearn import load_trainee, load_training_data

    method = get_method(run.method).from_options(run.options)
    data = load_training_data(method, job.forget, job.retain, job.refusals)
    rank, alpha, targets = job.lora or (0, 0.0, "")
    lora = SimpleNamespace(lora=job.lora is not None, lora_rank=rank, lora_alpha=alpha, lora_targets=targets)
    # load_trainee seeds the adapter's initial weights with run.seed: a worker's RNG has served earlier tasks
    trainee, tokenizer = load_trainee(job.base, job.device, method, lora, seed=run.seed)
    config = dataclasses.replace(job.config, seed=run.seed)
    result = train(trainee, tokenizer, method, data, config, out=Path(run.out),
                   progress=lambda step, total, terms: report(step / total), show_bar=False)  # fmt: skip
    return {
        "out": run.out,
        "checkpoints": {str(step): str(path) for step, path in sorted(result.checkpoints.items())},
        "final": str(result.final) if result.final else None,
        "last": result.history[-1] if result.history else {},
    }


def plan_runs(methods: Sequence[str], seeds: Sequence[int], given: dict[str, Any], out: Path) -> list[RunSpec]:
    """Every (method, seed): each method gets the given options it takes (an option none takes is an error); one
    run writes into `out` itself, several into `out/<method>_seed<seed>/`."""
    classes = {name: get_method(name) for name in dict.fromkeys(m.strip().lower() for m in methods if m.strip())}
    if not classes:
        raise UserError("give at least one method (--method a,b,…)")
    takes = {name: {spec.name for spec in cls.option_specs} for name, cls in classes.items()}
    unused = sorted(set(given) - set().union(*takes.values()))
    if unused:
        raise UserError(f"no chosen method takes option(s) {', '.join(unused)}")
    several = len(classes) * len(seeds) > 1
    runs = []
    for name, cls in classes.items():
        options = {key: value for key, value in given.items() if key in takes[name]}
        for seed in dict.fromkeys(seeds):
            runs.append(RunSpec(cls.name, options, seed, str(out / f"{cls.name}_seed{seed}" if several else out)))
    return runs


def _data_identity(job: UnlearnJob) -> dict[str, str | None]:
    files = {"forget": job.forget, "retain": job.retain, "refusals": job.refusals}
    return {role: file_hash(path) if path else None for role, path in files.items()}


def unlearn_sweep(
    job: UnlearnJob, runs: Sequence[RunSpec], cluster: ClusterSettings, out: Path, show: bool = True
) -> list[Outcome]:
    """Train every run as a Ray task; the outcomes in the runs' order (failed ones say why)."""
    spec = resolve_spec(ModelSpec.parse(job.base, dtype="float32", device=job.device))
    job = dataclasses.replace(job, device=run_device(spec, cluster.gpus))
    identity = [spec_fingerprint(spec), _data_identity(job), dataclasses.asdict(job.config), job.lora]
    factor = TRAINING_STATE_FACTOR if job.lora is None else LORA_TRAINING_FACTOR
    tasks = []
    for run in runs:
        method = get_method(run.method).from_options(run.options)
        copies = factor + (1.0 if method.needs_reference else 0.0)
        key = content_hash("unlearn", RESULT_VERSION, dataclasses.asdict(run), identity)
        tasks.append(Task(key, run.label, run, task_memory([spec], copies=copies, dtype=torch.float32)))
    return run_tasks(tasks, unlearn_work, job, out, cluster, "unlearn", show=show)
