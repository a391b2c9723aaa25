"""Probe cost against its floor, on the embedded SmolLM2 pair.

1. Time of a full probe (batch 32 × 64 tokens, every statistic, both models) / time of two bare forward passes
   (one per model) on the same batch. Goal ≤ 1.15.
2. Peak memory of a process holding an adapter pair (base + LoRA on the shared backbone) / one holding the model
   alone, both after one forward on the batch. Goal ≤ 1.1.
3. N adapter checkpoints on one backbone (N = 4, 12): the forward passes of all N in one stacked pass
   (core.analyses.multi.side_logits with core.models.adapters.n_sided_lora) against N separate passes (one per
   adapter, PEFT's own forward), and the whole probe across N models (core.analyses.multi.score_many) against N
   pairwise probes (core.analyses.probe.score per pair); printed as ratios separate / stacked.

Usage: python bench/probe.py [--repeats N] [--batch 32] [--tokens 64] [--device auto]
                             [--many-only] [--many-batch 8] [--many-n 4 12] [--passes-only]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import make_adapter  # noqa: E402

from core.analyses.probe import score  # noqa: E402
from core.models.embedded import ensure_embedded_model  # noqa: E402
from core.models.pair import ModelPair  # noqa: E402
from core.models.spec import ModelSpec  # noqa: E402
from core.scoring.encoding import Encoded  # noqa: E402


def make_batch(vocab: int, batch: int, tokens: int) -> list[Encoded]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (batch, tokens), generator=generator)
    return [Encoded(row.tolist(), 1) for row in ids]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds (process time, every thread) of each function, the functions taking turns in
    every round (one warm-up round first), so a change in the machine's load during the run hits them alike. On a
    shared machine the CPU time is the steadier measure of the work: the wall time also holds the waits for a core."""
    for fn in fns.values():
        fn()  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        **{name: statistics.median(values) for name, values in wall.items()},
        **{f"{name}_cpu": statistics.median(values) for name, values in cpu.items()},
    }


def bench_speed(model_dir: Path, adapter: Path, args: argparse.Namespace) -> dict:
    pair = ModelPair.load(ModelSpec(str(model_dir), device=args.device), ModelSpec(str(adapter), device=args.device))
    rows = make_batch(len(pair.tokenizer), args.batch, args.tokens)
    ids = torch.tensor([r.input_ids for r in rows], device=pair.device)
    mask = torch.ones_like(ids)

    def bare() -> None:
        for side in ("base", "unlearned"):
            with pair.use(side) as model, torch.no_grad():
                model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().sum().item()

    def probe() -> None:
        score(pair, rows, batch_size=args.batch, top_k=5)

    t_bare = time_it(bare, pair.device, args.repeats)
    t_probe = time_it(probe, pair.device, args.repeats)
    return {"bare_two_forwards_s": t_bare, "full_probe_s": t_probe, "ratio": t_probe / t_bare}


def peak_memory_child(mode: str, model_dir: str, adapter: str, batch: int, tokens: int, device: str) -> None:
    """Run in a fresh process: load one model or the adapter pair, do one forward/probe, print peak memory."""
    if mode == "single":
        pair = ModelPair.load(ModelSpec(model_dir, device=device), ModelSpec(model_dir, device=device))
    else:
        pair = ModelPair.load(ModelSpec(model_dir, device=device), ModelSpec(adapter, device=device))
    rows = make_batch(len(pair.tokenizer), batch, tokens)
    score(pair, rows[:1], batch_size=1)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = torch.cuda.max_memory_allocated() if pair.device.type == "cuda" else 0
    print(json.dumps({"peak_rss": peak_rss, "peak_gpu": gpu, "parameter_bytes": pair.parameter_bytes()}))


def bench_memory(model_dir: Path, adapter: Path, args: argparse.Namespace) -> dict:
    out = {}
    for mode in ("single", "pair"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--model",
            str(model_dir),
            "--adapter",
            str(adapter),
            "--batch",
            str(args.batch),
            "--tokens",
            str(args.tokens),
            "--device",
            args.device,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    key = "peak_gpu" if out["single"]["peak_gpu"] else "peak_rss"
    return {
        "single": out["single"],
        "pair": out["pair"],
        "measure": key,
        "peak_ratio": out["pair"][key] / out["single"][key],
        "parameter_ratio": out["pair"]["parameter_bytes"] / out["single"]["parameter_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child")
    parser.add_argument("--model")
    parser.add_argument("--adapter")
    parser.add_argument("--many-only", action="store_true", help="only the N-checkpoint comparison (3.)")
    parser.add_argument("--many-batch", type=int, default=8, help="rows per batch in the N-checkpoint comparison")
    parser.add_argument("--many-n", type=int, nargs="+", default=[4, 12], help="the N of the N-checkpoint comparison")
    parser.add_argument(
        "--passes-only", action="store_true",
        help="N-checkpoint comparison: only the forward passes (not N pairwise probes vs the probe across N)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child, args.model, args.adapter, args.batch, args.tokens, args.device)
        return
    model_dir = ensure_embedded_model()
    if args.many_only:
        bench_many(model_dir, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(model_dir, Path(tmp) / "adapter")
        speed = bench_speed(model_dir, adapter, args)
        memory = bench_memory(model_dir, adapter, args)
    device = (
        "cuda: " + torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"device: {device}; batch {args.batch} x {args.tokens} tokens; median of {args.repeats}")
    print(f"two bare forward passes: {speed['bare_two_forwards_s']:.3f} s")
    print(f"full probe (both models, all statistics): {speed['full_probe_s']:.3f} s")
    print(f"ratio probe / floor: {speed['ratio']:.3f}  (goal <= 1.15)")
    print(
        f"peak memory ({memory['measure']}): single model {memory['single'][memory['measure']] / 2**20:.0f} MiB, "
        f"adapter pair {memory['pair'][memory['measure']] / 2**20:.0f} MiB"
    )
    print(
        f"ratio pair / single (peak): {memory['peak_ratio']:.3f}  (goal <= 1.1); "
        f"weights only: {memory['parameter_ratio']:.3f}"
    )

    bench_many(model_dir, args)


def bench_many(model_dir: Path, args: argparse.Namespace) -> list[dict]:
    """For N = 4 and 12 r=16 adapters on the embedded model: one stacked pass vs N passes, and the probe across N
    models vs N pairwise probes (median of args.repeats, after a warm-up); each N printed as soon as measured. The
    adapters are copies of one random adapter in their own folders (each attached on its own, as N checkpoints
    are): the arithmetic, and so the time, does not depend on the weights' values."""
    from core.analyses.multi import ModelEntry, ModelSet, side_logits
    from core.scoring.encoding import collate
    from core.scoring.forward import selected_logits

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        first = make_adapter(model_dir, Path(tmp) / "adapter-0")
        most = max(args.many_n)
        adapters = [first] + [Path(shutil.copytree(first, Path(tmp) / f"adapter-{i}")) for i in range(1, most)]
        for n in args.many_n:
            base = ModelSpec(str(model_dir), device=args.device)
            entries = [ModelEntry(ModelSpec(str(a), device=args.device), f"m{i}") for i, a in enumerate(adapters[:n])]
            models = ModelSet.load(base, entries)
            rows = make_batch(len(models.tokenizer), args.many_batch, args.tokens)
            batch = collate(rows, models.tokenizer.pad_token_id, models.device)
            pairs = [models.pair(i) for i in range(n)]

            def separate(models=models, batch=batch, n=n) -> None:
                for i in range(1, n + 1):
                    with models.use(i) as model, torch.no_grad():
                        selected_logits(model, batch)

            def stacked(models=models, batch=batch) -> None:
                side_logits(models, batch)

            def pairwise(pairs=pairs, rows=rows) -> None:
                for pair in pairs:
                    score(pair, rows, batch_size=len(rows))

            def many(models=models, rows=rows) -> None:
                probe_rows(models, rows)

            chosen = [("separate", separate), ("stacked", stacked)]
            chosen += [] if args.passes_only else [("pairwise", pairwise), ("many", many)]
            times = time_interleaved(dict(chosen), models.device, args.repeats)
            out.append({"n": n, **times})
            print_many(out[-1:])
            del models, pairs
    return out


def probe_rows(models, rows: list[Encoded]) -> None:
    """core.analyses.multi.score_many's work on already encoded rows (as `score` takes them in `pairwise`): every
    side's logits, then each pair's statistics and token shifts."""
    from core.analyses.multi import side_logits
    from core.analyses.probe import pair_statistics, to_shifts
    from core.scoring.encoding import collate

    batch = collate(rows, models.tokenizer.pad_token_id, models.device)
    logits = side_logits(models, batch)
    for i in range(1, len(logits)):
        to_shifts(models.tokenizer, batch, pair_statistics(logits[0], logits[i], batch.targets, 5))


def print_many(results: list[dict]) -> None:
    for r in results:
        probes = (
            f"; N pairwise probes {r['pairwise']:.3f} s, probe across N {r['many']:.3f} s, "
            f"ratio {r['pairwise'] / r['many']:.2f}"
            if "many" in r
            else ""
        )
        print(
            f"N={r['n']} adapter checkpoints: N separate passes {r['separate']:.3f} s, one stacked pass "
            f"{r['stacked']:.3f} s (base included), ratio separate / stacked {r['separate'] / r['stacked']:.2f}; "
            f"CPU time {r['separate_cpu']:.3f} s vs {r['stacked_cpu']:.3f} s, ratio "
            f"{r['separate_cpu'] / r['stacked_cpu']:.2f}{probes}",
            flush=True,
        )


if __name__ == "__main__":
    main()
