"""Evaluation cost against its floor, on the embedded SmolLM2 and the demo data (the first N items of each split).

1. Teacher-forced throughput: tokens per second of a full evaluation (every teacher-forced metric of every split:
   `evaluate` with the cache off) / tokens per second of bare batched forward passes (`selected_logits` only) over
   the same rows in the same batches. Goal ≥ 0.8.
2. Generation (ROUGE): seconds per item of greedy generation, left-padded batches and one by one, at each
   --max-new-tokens, against the teacher-forced seconds per item.

Bare and full runs alternate and the median of --repeats is kept, so a machine that gets busier part-way through
skews both alike. Both wall-clock and process CPU seconds are reported: on a shared machine run with --threads 1 and
read the CPU ratio, which other processes barely move (wall time there swings by ±30%).

3. open-unlearning (where installed): `--open-unlearning-cmd CMD` (or the environment variable
   ULENS_OPEN_UNLEARNING_CMD) is a shell command that runs open-unlearning's TOFU evaluator on the same model and
   data (set up as tests/fixtures/open-unlearning/README.md describes); it is timed as a subprocess, our `evaluate`
   of the same metrics (--ou-template, --ou-items items per split, ROUGE at --ou-max-new-tokens, gradient norm) is
   timed in this process, and the ratio is printed (open-unlearning seconds / ours).

Usage: python bench/evaluate.py [--items 6] [--batch-size 8] [--repeats 3] [--threads N]
       [--max-new-tokens 200 64] [--device auto] [--json] [--open-unlearning-cmd CMD --ou-items 6]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.data.qa import QADataset, SplitData, load_demo_splits  # noqa: E402
from core.evaluation.evaluate import evaluate  # noqa: E402
from core.evaluation.rouge import rouge_logs  # noqa: E402
from core.evaluation.scores import plan_batches, plan_units  # noqa: E402
from core.evaluation.settings import EvalModel, EvalSettings  # noqa: E402
from core.models.embedded import ensure_embedded_model  # noqa: E402
from core.models.loading import load_backbone, load_tokenizer, resolve_device, resolve_dtype  # noqa: E402
from core.models.spec import ModelSpec  # noqa: E402
from core.scoring.encoding import collate  # noqa: E402
from core.scoring.forward import selected_logits  # noqa: E402

log = logging.getLogger("bench.evaluate")


def subset(data: SplitData, items: int) -> SplitData:
    """The first `items` items of every split."""
    return SplitData(**{name: QADataset(qa.name, qa.split, qa.items[:items]) for name, qa in data.splits().items()})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, process CPU seconds) of one call."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, run in turns (one warm-up turn first)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
            log.info("%s: %.2f s wall, %.2f s CPU", name, *times[name][-1])
    return {
        name: tuple(statistics.median(column) for column in zip(*values, strict=True)) for name, values in times.items()
    }


def bench_teacher_forced(model, tokenizer, data: SplitData, args: argparse.Namespace) -> dict:
    device = next(model.parameters()).device
    settings = EvalSettings(batch_size=args.batch_size)
    units = plan_units(data, tokenizer, settings.template_for(tokenizer), 2048)
    batches = plan_batches(units, settings.batch_size)
    tokens = sum(len(row.input_ids) for unit in units for row in unit.rows)
    scored = sum(len(row.input_ids) - row.score_from for unit in units for row in unit.rows)
    entry = EvalModel(model=model, tokenizer=tokenizer, name="bench", identity="bench")

    def bare() -> None:
        for batch in batches:
            rows = [row for unit in batch for row in unit.rows]
            with torch.inference_mode():
                selected_logits(model, collate(rows, tokenizer.pad_token_id, device)).float().sum().item()

    def full() -> None:
        evaluate([entry], data, settings=settings, cache=False)

    seconds = alternate({"bare": bare, "full": full}, device, args.repeats)
    (bare_wall, bare_cpu), (full_wall, full_cpu) = seconds["bare"], seconds["full"]
    return {
        "items": len(units),
        "rows": sum(len(unit.rows) for unit in units),
        "tokens": tokens,
        "scored_tokens": scored,
        "batches": len(batches),
        "bare_wall_s": bare_wall,
        "full_wall_s": full_wall,
        "bare_cpu_s": bare_cpu,
        "full_cpu_s": full_cpu,
        "bare_tokens_per_cpu_s": tokens / bare_cpu,
        "full_tokens_per_cpu_s": tokens / full_cpu,
        "ratio_cpu": bare_cpu / full_cpu,
        "ratio_wall": bare_wall / full_wall,
        "full_s_per_item": full_wall / len(units),
        "full_cpu_s_per_item": full_cpu / len(units),
    }


def bench_generation(model, tokenizer, data: SplitData, args: argparse.Namespace, per_item: float) -> list[dict]:
    device = next(model.parameters()).device
    template = EvalSettings().template_for(tokenizer)
    units = plan_units(data, tokenizer, template, 2048)
    out = []
    for max_new in args.max_new_tokens:
        texts: dict[int, list[str]] = {}
        row = {"max_new_tokens": max_new}
        for batch in (args.batch_size, 1):
            settings = EvalSettings(rouge=True, max_new_tokens=max_new, generation_batch_size=batch)
            found = {}
            wall, seconds = timed(
                lambda s=settings, f=found: f.update(rouge_logs(model, tokenizer, units, s, lambda: None, template)),
                device,
            )
            generations = [r["generation"] for entry in found.values() for r in entry["value_by_index"].values()]
            texts[batch] = generations
            new_tokens = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in generations)
            row[f"batch_{batch}_cpu_s_per_item"] = seconds / len(units)
            row[f"batch_{batch}_wall_s_per_item"] = wall / len(units)
            row[f"batch_{batch}_new_tokens_per_cpu_s"] = new_tokens / seconds
            row[f"batch_{batch}_new_tokens"] = new_tokens
            row[f"batch_{batch}_vs_teacher_forced"] = seconds / len(units) / per_item
            log.info("generation %d tokens, batch %d: %.2f s wall, %.2f s CPU", max_new, batch, wall, seconds)
        row["batched_equals_one_by_one"] = sum(a == b for a, b in zip(*texts.values(), strict=True)) / len(units)
        row["batched_speedup"] = row["batch_1_cpu_s_per_item"] / row[f"batch_{args.batch_size}_cpu_s_per_item"]
        out.append(row)
    return out


def bench_open_unlearning(model, tokenizer, data: SplitData, args: argparse.Namespace) -> dict | None:
    """open-unlearning's evaluator (a subprocess: its own process start, model load and data load included) against
    our `evaluate` of the same metrics on the same model and data, with its attention mask (process start and model
    load excluded on our side: the figure is what an evaluation costs once a model is loaded)."""
    command = args.open_unlearning_cmd or os.environ.get("ULENS_OPEN_UNLEARNING_CMD")
    if not command:
        return None
    entry = EvalModel(model=model, tokenizer=tokenizer, name="bench", identity="bench")
    settings = EvalSettings(
        template=args.ou_template, rouge=True, max_new_tokens=args.ou_max_new_tokens, gradnorm=True, batch_size=32,
        generation_batch_size=32,
    ).open_unlearning()  # fmt: skip
    device = next(model.parameters()).device
    ours_wall, ours_cpu = timed(lambda: evaluate([entry], data, settings=settings, cache=False), device)
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    finished = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    theirs = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    theirs_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    if finished.returncode != 0:
        log.warning("open-unlearning failed (%d): %s", finished.returncode, finished.stderr[-2000:])
        return {"command": command, "failed": finished.returncode}
    return {"command": command, "ours_wall_s": ours_wall, "ours_cpu_s": ours_cpu, "open_unlearning_wall_s": theirs,
            "open_unlearning_cpu_s": theirs_cpu, "ratio_wall": theirs / ours_wall,
            "ratio_cpu": theirs_cpu / ours_cpu}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=6, help="items per split (the demo has 18/144/18/36)")
    parser.add_argument("--generation-items", type=int, default=2, help="items per split for the generation part")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, nargs="*", default=[200, 64])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--open-unlearning-cmd", help="shell command running open-unlearning's evaluator (part 3)")
    parser.add_argument("--ou-items", type=int, default=6, help="items per split for part 3")
    parser.add_argument("--ou-template", default="chat", help="the template open-unlearning's command uses")
    parser.add_argument("--ou-max-new-tokens", type=int, default=8, help="its generation length")
    parser.add_argument("--only-open-unlearning", action="store_true", help="run part 3 alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = ModelSpec(str(ensure_embedded_model()), device=args.device)
    device = resolve_device(spec.device)
    tokenizer = load_tokenizer(spec)
    model = load_backbone(spec, device, resolve_dtype(spec.dtype, device))
    data = load_demo_splits()
    result = {"device": str(device), "threads": torch.get_num_threads(), "dtype": str(model.dtype)}
    result["open_unlearning"] = bench_open_unlearning(model, tokenizer, subset(data, args.ou_items), args)
    if args.only_open_unlearning:
        print(json.dumps(result) if args.json else _ratio_line(result["open_unlearning"]))
        return
    result["teacher_forced"] = bench_teacher_forced(model, tokenizer, subset(data, args.items), args)
    per_item = result["teacher_forced"]["full_cpu_s_per_item"]
    result["generation"] = bench_generation(model, tokenizer, subset(data, args.generation_items), args, per_item)
    if args.json:
        print(json.dumps(result))
        return
    tf = result["teacher_forced"]
    print(f"teacher-forced: {tf['items']} items, {tf['rows']} rows, {tf['tokens']} tokens in {tf['batches']} batches")
    print(
        f"  bare forward {tf['bare_tokens_per_cpu_s']:.0f} tok/CPU-s, full {tf['full_tokens_per_cpu_s']:.0f} tok/CPU-s"
    )
    print(f"  ratio full/bare throughput: {tf['ratio_cpu']:.3f} CPU, {tf['ratio_wall']:.3f} wall (goal >= 0.8)")
    batched = f"batch_{args.batch_size}"
    for row in result["generation"]:
        print(
            f"generation max_new_tokens={row['max_new_tokens']}:"
            f" batched {row[f'{batched}_cpu_s_per_item']:.2f} CPU-s/item,"
            f" one by one {row['batch_1_cpu_s_per_item']:.2f} (speed-up {row['batched_speedup']:.2f}x);"
            f" batched = {row[f'{batched}_vs_teacher_forced']:.1f}x the teacher-forced cost per item;"
            f" identical texts {row['batched_equals_one_by_one']:.0%}"
        )
    print(_ratio_line(result["open_unlearning"]))


def _ratio_line(ou: dict | None) -> str:
    if not ou or "ratio_wall" not in ou:
        return "open-unlearning: not run (no --open-unlearning-cmd / ULENS_OPEN_UNLEARNING_CMD, or it failed)"
    return (
        f"open-unlearning's evaluator {ou['open_unlearning_wall_s']:.1f} s wall / {ou['open_unlearning_cpu_s']:.1f} s"
        f" CPU, ours {ou['ours_wall_s']:.1f} s / {ou['ours_cpu_s']:.1f} s: ratio theirs/ours {ou['ratio_wall']:.2f}"
        f" wall, {ou['ratio_cpu']:.2f} CPU"
    )


if __name__ == "__main__":
    main()
