"""`python -m core evaluate`: evaluate models and run checkpoints on the QA splits, print the summary table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.common import add_template_argument, bounded_int, build_demo_first, template_from_args
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
    add_template_argument(parser, legacy="--no-chat")
    parser.add_argument(
        "--open-unlearning-mask", action="store_true",
        help="reproduce open-unlearning's attention mask (every pad-token id masked) and, for bf16 models, its bf16 "
        "log-softmax: its numbers to 1e-4 (docs/FIDELITY.md)",
    )  # fmt: skip
    parser.add_argument("--answer-only", action="store_true", help="score the answer tokens only (no end-of-turn/EOS)")
    parser.add_argument("--reference", help="reference model SPEC for the mia_reference attack")
    parser.add_argument("--gradnorm", action="store_true", help="also run the gradient-norm MIA (a backward per item)")
    parser.add_argument(
        "--lm-eval", nargs="+", metavar="TASK",
        help="also run lm-evaluation-harness tasks on each model (a task name, or a task YAML file or folder; "
        "world_facts_mcq is the demo's local task) → LMEval_SUMMARY.json / LMEval_EVAL.json",
    )  # fmt: skip
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
        template=template_from_args(args, [*args.model, *map(str, args.run)]) if _template_set(args) else None,
        max_length=args.max_length,
        score_end=not args.answer_only,
        reference=args.reference,
        gradnorm=args.gradnorm,
    )
    if args.open_unlearning_mask:
        settings = settings.open_unlearning()
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
    if args.lm_eval:
        from core.evaluation.lm_eval import run_lm_eval_all

        run_lm_eval_all(models, args.lm_eval, out, batch_size=args.batch_size)
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    sys.stdout.write(result.to_frame().to_string(index=False) + "\n")
    return 0


def _template_set(args: argparse.Namespace) -> bool:
    """Whether the options name a template; else each model is evaluated with its own default."""
    return bool(args.template or args.no_chat)
