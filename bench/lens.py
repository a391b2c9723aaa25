"""Cost of the layer view against its floor, on the embedded SmolLM2 with a random LoRA adapter as the unlearned side.

1. Logit lens of one prompt + answer (both models, every layer) / two bare forward passes (one per model).
2. Hidden-state drift over a set of items / two bare forward passes per batch (one per model).
3. Weight-change map of the adapter pair (read as B·A·scaling, no merge) / the same norms from a merged copy.

Times are CPU seconds of this process (steadier than wall time on a shared machine; use --threads 1 there).
Usage: python bench/lens.py [--repeats 3] [--items 32] [--batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import ANSWER, PROMPT, adapter_pair, cpu_time, parse_bench_args  # noqa: E402

from core.analyses.lens import hidden_state_drift, logit_lens, weight_change  # noqa: E402
from core.models.pair import ModelPair  # noqa: E402
from core.scoring.encoding import collate, encode  # noqa: E402


def bare_forwards(pair: ModelPair, ids: torch.Tensor, mask: torch.Tensor) -> None:
    for side in ("base", "unlearned"):
        with pair.use(side) as model, torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


def merged_norms(model_dir: Path, adapter: Path) -> None:
    """The dense alternative: merge a copy, then ‖W_merged − W‖/‖W‖ for every parameter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).merge_and_unload()
    weights = dict(base.named_parameters())
    with torch.no_grad():
        for name, tensor in merged.named_parameters():
            ((tensor.double() - weights[name].double()).norm() / weights[name].double().norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parse_bench_args(parser)
    with adapter_pair() as (pair, model_dir, adapter):
        print(f"SmolLM2-135M + LoRA r=16 (all linear), {torch.get_num_threads()} thread(s), CPU seconds")

        row = encode(pair.tokenizer, PROMPT, ANSWER, max_length=pair.context_length)
        ids = torch.tensor([row.input_ids])
        lens = cpu_time(lambda: logit_lens(pair, PROMPT, ANSWER), args.repeats)
        floor = cpu_time(lambda: bare_forwards(pair, ids, torch.ones_like(ids)), args.repeats)
        n_answer = len(row.input_ids) - row.score_from
        print(
            f"logit lens ({len(row.input_ids)} tokens, {n_answer} answer tokens × 31 layers): {lens:.3f} s; "
            f"two forwards {floor:.3f} s; ratio {lens / floor:.2f}"
        )

        items = [(f"{PROMPT} (variant {i})", ANSWER) for i in range(args.items)]
        drift = cpu_time(lambda: hidden_state_drift(pair, {"forget": items}, batch_size=args.batch), args.repeats)
        rows = [encode(pair.tokenizer, p, a, max_length=pair.context_length) for p, a in items]

        def drift_floor() -> None:
            for start in range(0, len(rows), args.batch):
                batch = collate(rows[start : start + args.batch], pair.tokenizer.pad_token_id, pair.device)
                bare_forwards(pair, batch.input_ids, batch.attention_mask)

        floor = cpu_time(drift_floor, args.repeats)
        print(
            f"drift ({args.items} items, batch {args.batch}): {drift:.3f} s; two forwards per batch {floor:.3f} s; "
            f"ratio {drift / floor:.2f}"
        )

        low_rank = cpu_time(lambda: weight_change(pair), args.repeats)
        merged = cpu_time(lambda: merged_norms(model_dir, adapter), args.repeats)
        print(
            f"weight change (adapter read as B·A): {low_rank:.3f} s; merged copy + dense norms {merged:.3f} s; "
            f"ratio {low_rank / merged:.2f}"
        )


if __name__ == "__main__":
    main()
