"""Unlearning benchmark: seconds per step of each method vs one plain fine-tuning step on the same batch, and the
demo build time. Prints a markdown table (figures go to docs/PERFORMANCE-unlearn.md).

    python bench/unlearn.py [--repeats 3] [--batch-size 8] [--threads N] [--demo quick|full]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core.evaluation.evaluate  # noqa: F401  (registers the demo evaluation, stage 4 of the timed build)
from core.data.qa import load_demo_splits
from core.models.embedded import ensure_embedded_model
from core.models.loading import load_backbone, load_tokenizer
from core.models.spec import ModelSpec
from core.unlearn import UNLEARNING_METHODS, TrainConfig, TrainingData, get_method
from core.unlearn.demo import RECIPES, DemoExperiment
from core.unlearn.trainee import LoraTrainee, attach_adapter, lora_config
from core.unlearn.trainer import RunContext, one_step

log = logging.getLogger("bench.unlearn")


def time_methods(repeats: int, batch_size: int) -> list[tuple[str, float, float]]:
    """(method, median s/step, ratio to the fine-tuning step) with LoRA r=16 on all linear layers, fp32 CPU."""
    folder = ensure_embedded_model()
    spec = ModelSpec(str(folder), dtype="float32", device="cpu")
    tokenizer = load_tokenizer(spec)
    host = load_backbone(spec, torch.device("cpu"), torch.float32)
    splits = load_demo_splits()
    data = TrainingData(splits.forget.items, splits.retain.items, splits.refusals)
    config = TrainConfig(steps=repeats + 1, lr=1e-4, batch_size=batch_size)
    # The reference adapter plays the demo's target: every method starts from a copy of it.
    host = attach_adapter(host, "reference", lora_config(16, 32.0, "all-linear"), trainable=False)
    timings: dict[str, float] = {}
    for name in ["finetune", *(n for n, c in UNLEARNING_METHODS.items() if c.unlearns)]:
        method = get_method(name)()
        host = attach_adapter(host, name, lora_config(16, 32.0, "all-linear"), trainable=True)
        trainee = LoraTrainee(host, name, "reference", str(folder))
        method.check(host)
        trainable = [p for n, p in trainee.candidates() if method.trainable(n)]
        trainee.freeze_except(trainable)
        optimizer = torch.optim.AdamW(trainable, lr=config.lr)
        run = RunContext(trainee, tokenizer, data, config)
        with torch.no_grad():
            method.prepare(run)
        seconds = []
        for step in range(config.steps):
            began = time.perf_counter()
            one_step(run, method, step, optimizer, trainable)
            seconds.append(time.perf_counter() - began)
        timings[name] = statistics.median(seconds[1:])  # the first step warms caches up
        log.info("%s: %.2f s/step", name, timings[name])
    return [(name, value, value / timings["finetune"]) for name, value in timings.items()]


def time_demo(recipe: str, root: Path | None = None) -> dict[str, float]:
    """Build the demo from an empty folder and an empty evaluation cache (the embedded model already converted):
    the total, the CPU seconds, and when each model (and the evaluation stage) became ready."""
    models = ensure_embedded_model().parent
    with tempfile.TemporaryDirectory() as tmp:
        if root is not None and root.exists() and any(root.iterdir()):
            raise SystemExit(f"{root} is not empty: the demo build is timed from an empty folder")
        home = Path(tmp) / "home"  # a cold cache home: no evaluation is reused from an earlier build
        home.mkdir()
        (home / models.name).symlink_to(models, target_is_directory=True)
        previous = os.environ.get("ULENS_HOME")
        os.environ["ULENS_HOME"] = str(home)
        try:
            experiment = DemoExperiment(RECIPES[recipe], root=root or Path(tmp) / "demo")
            began, cpu = time.perf_counter(), time.process_time()
            marks: dict[str, float] = {}

            def note(status: dict) -> None:
                for name in status.get("models") or []:
                    marks.setdefault(f"{name}_ready_s", time.perf_counter() - began)
                if str(status.get("stage", "")).startswith("evaluate"):
                    marks.setdefault("evaluation_start_s", time.perf_counter() - began)

            experiment.build(progress=note)
        finally:
            if previous is None:
                os.environ.pop("ULENS_HOME", None)
            else:
                os.environ["ULENS_HOME"] = previous
        total = time.perf_counter() - began
        return (
            {"total_s": total, "cpu_s": time.process_time() - cpu}
            | marks
            | {"evaluation_s": total - marks.get("evaluation_start_s", total)}
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--demo", choices=sorted(RECIPES), help="also time a demo build from an empty cache")
    parser.add_argument("--skip-methods", action="store_true")
    parser.add_argument("--demo-root", type=Path, help="build the timed demo here and keep it (default: a temp folder)")
    parser.add_argument("--threads", type=int, help="torch threads (1 measures more steadily on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lines = [f"torch threads: {torch.get_num_threads()}"]
    if not args.skip_methods:
        lines += [
            f"batch: {args.batch_size} forget + {args.batch_size} retain QA items (chat template), LoRA r=16",
            "| method | s/step | × fine-tuning step |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {sec:.2f} | {ratio:.2f} |" for name, sec, ratio in time_methods(args.repeats, args.batch_size)
        ]
    if args.demo:
        figures = time_demo(args.demo, args.demo_root)
        lines.append(f"demo ({args.demo}): " + ", ".join(f"{k} {v:.0f}" for k, v in figures.items()))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
