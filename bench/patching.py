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
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import make_adapter  # noqa: E402
from lens import ANSWER, PROMPT, cpu_time  # noqa: E402

from core.analyses.patching import naive_patched_logprobs, patch_curve, patched_logprobs, record  # noqa: E402
from core.analyses.patching.runs import patch_positions  # noqa: E402
from core.models.embedded import ensure_embedded_model  # noqa: E402
from core.models.pair import ModelPair  # noqa: E402
from core.models.spec import ModelSpec  # noqa: E402
from core.scoring.encoding import encode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = ensure_embedded_model()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(model_dir, Path(tmp) / "adapter")
        spec = ModelSpec(str(model_dir), dtype="float32", device="cpu")
        pair = ModelPair.load(spec, ModelSpec(str(model_dir), adapter=str(adapter), dtype="float32", device="cpu"))
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
