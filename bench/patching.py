"""Activation patching: every layer's patched run in batches of rows (each row patches a different layer) against
the naive loop of one full forward pass per layer, on the embedded SmolLM2 with a random LoRA adapter as the
unlearned side. Also the whole curve (`patch_curve`: both directions and the two clean runs) against two bare
forward passes.

Times are CPU seconds of this process (steadier than wall time on a shared machine; use --threads 1 there).
Prints the ratio and the largest difference between the batched and the looped log-probs.
Usage: python bench/patching.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import ANSWER, PROMPT, adapter_pair, cpu_time, parse_bench_args  # noqa: E402

from core.analyses.patching import naive_patched_logprobs, patch_curve, patched_logprobs, record  # noqa: E402
from core.analyses.patching.runs import patch_positions  # noqa: E402
from core.scoring.encoding import encode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_bench_args(parser)
    with adapter_pair() as (pair, _, _):
        row = encode(pair.tokenizer, PROMPT, ANSWER, max_length=pair.context_length)
        ids, p = torch.tensor(row.input_ids), row.score_from
        where = patch_positions("all", len(ids), p)
        with pair.use("base") as model:
            source = record(model, ids, p)
        layers = len(source.states)
        print(
            f"SmolLM2-135M + LoRA r=16 (all linear), {len(ids)} tokens, {layers} patch points, "
            f"{torch.get_num_threads()} thread(s), CPU seconds"
        )
        with pair.use("unlearned") as model:
            batched = cpu_time(lambda: patched_logprobs(model, ids, p, source.states, where), args.repeats)
            naive = cpu_time(lambda: naive_patched_logprobs(model, ids, p, source.states, where), args.repeats)
            difference = (
                (
                    patched_logprobs(model, ids, p, source.states, where)
                    - naive_patched_logprobs(model, ids, p, source.states, where)
                )
                .abs()
                .max()
            )
        print(
            f"patched runs, one batch of {layers} rows: {batched:.3f} s; naive loop of {layers} forwards "
            f"{naive:.3f} s; naive / batched {naive / batched:.2f}; max |Δ log-prob| {float(difference):.1e}"
        )

        def two_forwards() -> None:
            for side in ("base", "unlearned"):
                with pair.use(side) as model, torch.no_grad():
                    model(input_ids=ids.unsqueeze(0), use_cache=False)

        curve = cpu_time(lambda: patch_curve(pair, PROMPT, ANSWER), args.repeats)
        floor = cpu_time(two_forwards, args.repeats)
        print(
            f"whole curve (both directions): {curve:.3f} s; two bare forwards {floor:.3f} s; ratio {curve / floor:.1f}"
        )


if __name__ == "__main__":
    main()
