"""`python -m core unlearn`: run one registered method on a model and a forget (+ retain) file."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from core.cli.common import add_template_argument, template_from_args
from core.cli.sweep import add_ray_arguments, run_unlearn_sweep
from core.common.errors import UserError
from core.unlearn.methods import UNLEARNING_METHODS, UnlearningMethod, get_method
from core.unlearn.trainer import TrainConfig, TrainingData, train


def _method_options() -> dict[str, dataclasses.Field]:
    """Every hyper-parameter any registered method takes, by name (the CLI offers the union)."""
    options: dict[str, dataclasses.Field] = {}
    for cls in UNLEARNING_METHODS.values():
        for option in dataclasses.fields(cls.Options):
            options.setdefault(option.name, option)
    return options


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `unlearn` on the main CLI's subcommands, with the union of the methods' options."""
    parser = commands.add_parser("unlearn", help="run an unlearning method (LoRA by default), saving checkpoints")
    parser.add_argument("--list", action="store_true", help="name the registered methods and exit")
    parser.add_argument("--method", help=f"one of: {', '.join(UNLEARNING_METHODS)}")
    parser.add_argument("--base", help="model SPEC to start from (folder, adapter folder, demo:NAME)")
    parser.add_argument("--forget", type=Path, help="forget set (.jsonl/.json/.csv/.parquet with question, answer)")
    parser.add_argument("--retain", type=Path, help="retain set (same formats)")
    parser.add_argument("--refusals", type=Path, help="refusal strings, one per line (method idk)")
    parser.add_argument("--out", type=Path, help="output folder (checkpoint-<step>/ folders, run.json)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-4 with LoRA, 1e-5 full)")
    parser.add_argument("--batch-size", type=int, default=8, help="forget items per step (retain: the same)")
    parser.add_argument("--save-every", type=int, default=0, help="checkpoint every K steps (the last step always)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for CUDA GPUs with bf16, off on CPU, where it is far slower)",
    )
    add_template_argument(parser, legacy="--no-chat")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_true", default=True, help="train a LoRA adapter (default)")
    mode.add_argument("--full", dest="lora", action="store_false", help="train all parameters")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--lora-targets", default="all-linear", help="all-linear or comma-separated module names")
    parser.add_argument("--device", default="auto")
    group = parser.add_argument_group("method options (each method takes some; defaults are the method's)")
    for name, option in _method_options().items():
        kind = type(option.default)
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"method_{name}",
            type=kind,
            default=None,
            choices=option.metadata.get("choices"),
            help=option.metadata.get("help"),
        )
    add_ray_arguments(parser, "each method and seed (--method a,b --seeds 0,1)", seeds=True)
    parser.set_defaults(handler=run_unlearn)


def describe_methods() -> str:
    """One line per registered method: name, what it minimises, its options with defaults."""
    lines = []
    for name, cls in UNLEARNING_METHODS.items():
        options = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls.Options))
        lines.append(f"{name:<11} {cls.summary}" + (f"  [{options}]" if options else ""))
    return "\n".join(lines)


def run_unlearn(args: argparse.Namespace) -> int:
    """Train the chosen method (or list the methods), then print the checkpoints and the last step's losses."""
    if args.list:
        sys.stdout.write(describe_methods() + "\n")
        return 0
    if args.ray:  # one Ray task per method and seed (core.sweep)
        return run_unlearn_sweep(args, _given_options(args))
    missing = [flag for flag in ("method", "base", "forget", "out") if not getattr(args, flag)]
    if missing:
        raise UserError(f"unlearn needs {', '.join('--' + m for m in missing)} (or --list)")
    method = get_method(args.method).from_options(_given_options(args))
    config = TrainConfig(
        steps=args.steps,
        lr=args.lr or (1e-4 if args.lora else 1e-5),
        batch_size=args.batch_size,
        save_every=args.save_every,
        seed=args.seed,
        max_grad_norm=args.max_grad_norm,
        bf16=args.bf16,
        chat=template_from_args(args, [args.base]),  # a template name: every encoding takes it for the chat flag
    )
    data = load_training_data(method, args.forget, args.retain, args.refusals)
    trainee, tokenizer = load_trainee(args.base, args.device, method, args, seed=args.seed)
    result = train(trainee, tokenizer, method, data, config, out=args.out)
    last = result.history[-1] if result.history else {}
    sys.stdout.write(
        f"{method.name}: {len(result.checkpoints)} checkpoint(s) in {args.out}; final {result.final}\n"
        + (f"last step: {', '.join(f'{k}={v:.4g}' for k, v in last.items())}\n" if last else "")
    )
    return 0


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, f"method_{name}")
        for name in _method_options()
        if getattr(args, f"method_{name}") is not None
    }


def load_training_data(
    method: UnlearningMethod, forget: Path, retain: Path | None, refusals: Path | None
) -> TrainingData:
    """Read the forget/retain QA files and refusal lines a method needs (core.data.qa validates the records)."""
    from core.data.qa import load_lines, load_qa_dataset

    if method.uses_retain and retain is None:
        raise UserError(f"method {method.name} needs a retain set: pass --retain FILE")
    return TrainingData(
        forget=load_qa_dataset(forget, split="forget").items,
        retain=load_qa_dataset(retain, split="retain").items if retain else [],
        refusals=load_lines(refusals) if refusals else [],
    )


def load_trainee(
    base: str, device: str, method: UnlearningMethod, args: argparse.Namespace, seed: int
) -> tuple[Any, Any]:
    """Load the model named by `base` (float32) and wrap it for training as the CLI options say. The global RNG is
    seeded with `seed` just before the trainee is built, so a new adapter's initial weights depend on the seed alone
    (not on what the process drew before): `unlearn` and `unlearn --ray` both come through here."""
    import torch

    from core.cli.common import build_demo_first
    from core.models.loading import load_backbone, load_tokenizer, resolve_device, resolve_dtype
    from core.models.spec import ModelSpec, resolve_spec
    from core.unlearn.trainee import build_trainee, lora_config

    spec = ModelSpec.parse(base, dtype="float32", device=device)
    build_demo_first([spec])  # a demo:NAME start is built first (resolving it never trains)
    spec = resolve_spec(spec)
    torch_device = resolve_device(spec.device)
    tokenizer = load_tokenizer(spec)
    model = load_backbone(spec, torch_device, resolve_dtype(spec.dtype, torch_device))
    lora = lora_config(args.lora_rank, args.lora_alpha, args.lora_targets) if args.lora else None
    torch.manual_seed(seed)  # the adapter's initial weights (PEFT draws them from the global RNG)
    return build_trainee(model, spec.source, spec.adapter, tokenizer, lora, method.needs_reference), tokenizer
