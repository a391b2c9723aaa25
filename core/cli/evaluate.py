"""`python -m core evaluate`: evaluate models and run checkpoints on the QA splits, print the summary table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.common import bounded_int, build_demo_first
from core.cli.sweep import add_ray_arguments, run_evaluate_sweep
from core.common.errors import UserError
from core.common.limits import MAX_BATCH_SIZE, MAX_NEW_TOKENS
from core.evaluation.evaluate import default_out_dir, evaluate, load_eval_data, oracle_is_spec, run_models
from core.evaluation.settings import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, EvalModel, EvalSettings
from core.models.spec import ModelSpec


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `evaluate --model SPEC… [--run DIR…] --data DIR|demo --out DIR [--oracle SPEC|DIR] …`."""
    parser = commands.add_parser(
        "evaluate", help="evaluate models / checkpoints on forget, retain, holdout, world facts"
    )
    parser.add_argument("--model", action="append", default=[], help="model SPEC (repeatable; demo:NAME, folders…)")
    parser.add_argument("--run", action="append", default=[], type=Path, help="unlearning run folder: every checkpoint")
    parser.add_argument("--data", required=True, help="split folder (forget.jsonl, retain.jsonl, …) or 'demo'")
    parser.add_argument("--out", type=Path, help="results folder, one sub-folder per model (default: <cache>/evals)")
    parser.add_argument("--oracle", help="oracle: a model name or SPEC (evaluated too), or a results folder")
    parser.add_argument("--rouge", action="store_true", help="also generate greedily and score ROUGE (slow on CPU)")
    parser.add_argument(
        "--max-new-tokens", type=bounded_int(1, MAX_NEW_TOKENS), default=DEFAULT_MAX_NEW_TOKENS,
        help=f"generation length (1..{MAX_NEW_TOKENS})",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=bounded_int(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE,
        help=f"items per forward pass (1..{MAX_BATCH_SIZE})",
    )  # fmt: skip
    parser.add_argument("--no-chat", action="store_true", help="do not wrap questions in the chat template")
    parser.add_argument("--max-length", type=int, help="token limit per row (default: the model's context)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--no-cache", action="store_true", help="recompute even where a cached evaluation exists")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON (EvalResult.from_json)")
    add_ray_arguments(parser, "each model")
    parser.set_defaults(handler=run_evaluate)
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate with a progress bar, then print the summary table (or JSON)."""
    from tqdm.auto import tqdm

    if not args.model and not args.run:
        raise UserError("evaluate needs at least one --model SPEC or --run DIR")
    options = {"dtype": args.dtype, "device": args.device}
    models = [EvalModel(spec=ModelSpec.parse(spec, **options)) for spec in args.model]
    models += [model for run in args.run for model in run_models(run, **options)]
    settings = EvalSettings(
        batch_size=args.batch_size,
        generation_batch_size=args.batch_size,
        rouge=args.rouge,
        max_new_tokens=args.max_new_tokens,
        chat=not args.no_chat,
        max_length=args.max_length,
    )
    oracle = args.oracle
    if oracle and oracle_is_spec(oracle):
        oracle = EvalModel(spec=ModelSpec.parse(oracle, **options))
    build_demo_first(model.spec for model in [*models, oracle] if isinstance(model, EvalModel) and model.spec)
    if args.ray:  # one Ray task per model (core.sweep)
        return run_evaluate_sweep(args, models, oracle, settings)
    with tqdm(total=0, unit="batch", desc="evaluate") as bar:

        def show(done: int, total: int, label: str) -> None:
            bar.total = total
            bar.set_description(label, refresh=False)
            bar.update(done - bar.n)

        out = args.out or default_out_dir()
        result = evaluate(models, load_eval_data(args.data), oracle=oracle, settings=settings, out_dir=out,
                          progress=show, cache=not args.no_cache)  # fmt: skip
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    sys.stdout.write(result.to_frame().to_string(index=False) + "\n")
    return 0
