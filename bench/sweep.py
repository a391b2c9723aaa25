"""Evaluation sweep on local Ray workers against the same evaluation in one process (core.sweep, docs/SCALING.md).

Six models (the embedded SmolLM2 and five LoRA adapters on it, as an unlearning run's checkpoints are) evaluated on
the first N items of every demo split:

1. Speed-up: one process with W torch threads / W Ray workers of one thread each (`--ray local`, W CPUs).
2. Per-task overhead: one Ray worker / one process, both one thread, so the difference is what Ray adds: starting
   and importing a worker, shipping the task and its data, loading the backbone in every task (one process loads
   it once and switches adapters), storing each result. Reported per task, with Ray's start-up apart.

Each task's own seconds (stored by the task, core.sweep.store) are read back, so the overhead splits into the part
inside tasks (loading) and the part around them (scheduling, workers, the driver).

Usage: python bench/sweep.py [--items 4] [--models 6] [--workers 2] [--batch-size 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import make_adapter  # noqa: E402

from core.data.qa import QADataset, SplitData, load_demo_splits  # noqa: E402
from core.evaluation.evaluate import evaluate  # noqa: E402
from core.evaluation.settings import EvalModel, EvalSettings  # noqa: E402
from core.models.embedded import ensure_embedded_model  # noqa: E402
from core.models.spec import ModelSpec  # noqa: E402
from core.sweep.cluster import ClusterSettings  # noqa: E402
from core.sweep.evaluate import evaluate_sweep  # noqa: E402
from core.sweep.store import TaskStore  # noqa: E402

log = logging.getLogger("bench.sweep")


def subset(data: SplitData, items: int) -> SplitData:
    return SplitData(**{name: QADataset(qa.name, qa.split, qa.items[:items]) for name, qa in data.splits().items()})


def wall(fn: Callable[[], Any]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def task_seconds(out: Path) -> list[float]:
    """The seconds each task of the sweep into `out` spent in its own work, as the task stored them."""
    folder = TaskStore.beside(out).root / "results"
    return [json.loads(path.read_text())["seconds"] for path in sorted(folder.glob("*.json"))]


def on_ray(workers: int, models: list[EvalModel], data: SplitData, settings: EvalSettings, out: Path) -> dict:
    """(Ray start-up seconds, sweep seconds, task seconds) on a local Ray instance of `workers` CPUs."""
    import ray

    started = wall(lambda: ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                                    logging_level="ERROR"))  # fmt: skip
    try:
        seconds = wall(lambda: evaluate_sweep(models, data, out_dir=out, settings=settings, show=False,
                                              cluster=ClusterSettings(), recompute=True))  # fmt: skip
    finally:
        ray.shutdown()
    return {"init_s": started, "sweep_s": seconds, "task_s": task_seconds(out)}


def in_process(threads: int, models: list[EvalModel], data: SplitData, settings: EvalSettings, out: Path) -> float:
    torch.set_num_threads(threads)
    return wall(lambda: evaluate(models, data, settings=settings, out_dir=out, cache=False))


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    base = ensure_embedded_model()
    models = [EvalModel(spec=ModelSpec(str(base), device="cpu"), name="base")]
    for k in range(1, args.models):
        adapter = make_adapter(base, scratch / f"adapter{k}")
        models.append(EvalModel(spec=ModelSpec(str(base), adapter=str(adapter), device="cpu"), name=f"run{k}"))
    data = subset(load_demo_splits(), args.items)
    settings = EvalSettings(batch_size=args.batch_size)
    figures: dict[str, Any] = {"models": len(models), "items_per_split": args.items, "workers": args.workers}
    figures["single_1thread_s"] = in_process(1, models, data, settings, scratch / "single1")
    figures["ray_1worker"] = on_ray(1, models, data, settings, scratch / "ray1")
    figures["single_s"] = in_process(args.workers, models, data, settings, scratch / "single")
    figures["ray"] = on_ray(args.workers, models, data, settings, scratch / "ray")
    serial = figures["ray_1worker"]
    figures["speedup"] = figures["single_s"] / figures["ray"]["sweep_s"]
    figures["overhead_per_task_s"] = (serial["sweep_s"] - figures["single_1thread_s"]) / len(models)
    figures["around_tasks_per_task_s"] = (serial["sweep_s"] - sum(serial["task_s"])) / len(models)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4, help="items of every split")
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers, and the single process's threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        figures = run(args, Path(tmp))
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    ray_, serial = figures["ray"], figures["ray_1worker"]
    print(f"{figures['models']} models, {figures['items_per_split']} items per split")
    print(f"one process, {args.workers} threads: {figures['single_s']:.1f} s")
    print(f"Ray, {args.workers} workers:        {ray_['sweep_s']:.1f} s (+ {ray_['init_s']:.1f} s to start Ray)")
    print(f"speed-up (one process / Ray): {figures['speedup']:.2f}")
    print(f"one thread: one process {figures['single_1thread_s']:.1f} s, one Ray worker {serial['sweep_s']:.1f} s "
          f"(tasks' own work {sum(serial['task_s']):.1f} s)")  # fmt: skip
    around = figures["around_tasks_per_task_s"]
    print(f"overhead per task: {figures['overhead_per_task_s']:.2f} s "
          f"({around:.2f} s of it around the tasks: scheduling, workers, results)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
