"""`--ray [local|auto|ADDRESS]` for `evaluate`, `robustness` and `unlearn`: the flags, and the handlers that run
each command's work as Ray tasks (core.sweep) and print what the command prints; docs/SCALING.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.common.errors import UserError
from core.common.limits import GiB
from core.sweep.backend import describe_failures
from core.sweep.cluster import LOCAL, ClusterSettings, require_ray


def add_ray_arguments(parser: argparse.ArgumentParser, what: str, seeds: bool = False) -> None:
    """The Ray flags; `what` names a command's tasks in the help (`seeds`: unlearn's --seeds)."""
    group = parser.add_argument_group("sweeps on a Ray cluster (docs/SCALING.md; needs requirements-ray.txt)")
    group.add_argument(
        "--ray", nargs="?", const=LOCAL, metavar="local|auto|ADDRESS",
        help=f"run {what} as a Ray task: local (a Ray instance on this machine), auto (the cluster this machine "
        "joined) or a cluster address (ray://head:10001); results land in the usual folders as tasks finish",
    )  # fmt: skip
    group.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per task (default 1)")
    group.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per task (default 0; with GPUs, auto is cuda)")
    group.add_argument("--ray-memory", type=float, help="GiB of memory per task (default: estimated from the model)")
    group.add_argument("--ray-retries", type=int, default=3, help="reruns of a task whose worker or node dies")
    group.add_argument("--ray-local-cpus", type=int, help="CPUs of a --ray local instance (default: all)")
    if seeds:
        group.add_argument("--seeds", help="comma-separated seeds, one run per method and seed (default: --seed)")


def cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    """The cluster and per-task resources the flags name; without ray installed, a UserError saying how to add it."""
    require_ray()
    memory = int(args.ray_memory * GiB) if args.ray_memory is not None else None
    return ClusterSettings(address=args.ray, cpus=args.ray_cpus, gpus=args.ray_gpus, memory_bytes=memory,
                           retries=args.ray_retries, local_cpus=args.ray_local_cpus)  # fmt: skip


def _fail_if(failures: list[tuple[str, str]]) -> None:
    message = describe_failures(failures)
    if message:
        raise UserError(message)


# ---------------------------------------------------------------------------------------------- evaluate


def run_evaluate_sweep(args: argparse.Namespace, models: list[Any], oracle: Any, settings: Any) -> int:
    """`evaluate --ray`: the models as Ray tasks; the summary table (or JSON) of those that finished, then the
    failures as one error."""
    from core.evaluation.evaluate import default_out_dir, load_eval_data
    from core.sweep.evaluate import evaluate_sweep

    cluster = cluster_settings(args)
    swept = evaluate_sweep(models, load_eval_data(args.data), out_dir=args.out or default_out_dir(), cluster=cluster,
                           oracle=oracle, settings=settings, recompute=args.no_cache)  # fmt: skip
    if swept.result.evaluations:
        text = swept.result.to_json() if args.json else swept.result.to_frame().to_string(index=False)
        sys.stdout.write(text + "\n")
    _fail_if(swept.failures)
    return 0


# ---------------------------------------------------------------------------------------------- robustness


def run_robustness_sweep(args: argparse.Namespace) -> int:
    """`robustness --ray`: one Ray task per attack; robustness.json/.csv as a single-process run writes them."""
    from core.attacks.runner import load_robustness_data
    from core.cli.common import build_demo_first
    from core.cli.robustness import _settings, write_result
    from core.models.spec import DEFAULT_BASE, DEFAULT_UNLEARNED, ModelSpec
    from core.sweep.robustness import PairInputs, robustness_sweep

    if not args.data or not args.out:
        raise UserError("robustness needs --data DIR|demo and --out DIR (or --list)")
    if bool(args.base) != bool(args.unlearned):
        raise UserError("give both --base and --unlearned, or neither (for the embedded demo pair)")
    cluster = cluster_settings(args)
    options = {"dtype": args.dtype, "device": args.device, "trust_remote_code": args.trust_remote_code,
               "allow_unsafe_weights": args.allow_unsafe_weights}  # fmt: skip
    base = ModelSpec.parse(args.base or DEFAULT_BASE, **options)
    unlearned = ModelSpec.parse(args.unlearned or DEFAULT_UNLEARNED, **options)
    build_demo_first([base, unlearned])
    pair = PairInputs(base, unlearned, False if args.skip_memory_check else None)
    attacks = [part for entry in args.attacks for part in entry.split(",")] if args.attacks else None
    result, failures = robustness_sweep(pair, load_robustness_data(args.data), attacks, _settings(args), args.out,
                                        cluster)  # fmt: skip
    if result is not None:
        json_path, csv_path = write_result(result, args.out)
        table = result.to_frame()
        columns = ["attack", "variant", "n_items", "reference_unlearned", "attacked_unlearned", "recovery_pct"]
        text = result.to_json() if args.json else table[table["headline"]][columns].to_string(index=False)
        sys.stdout.write(text + "\n" + ("" if args.json else f"wrote {json_path} and {csv_path}\n"))
    _fail_if(failures)
    return 0


# ---------------------------------------------------------------------------------------------- unlearn


def _seeds(args: argparse.Namespace) -> list[int]:
    if not args.seeds:
        return [args.seed]
    try:
        return [int(part) for part in args.seeds.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give whole numbers separated by commas") from None


def run_unlearn_sweep(args: argparse.Namespace, given: dict[str, Any]) -> int:
    """`unlearn --ray --method a,b --seeds 0,1`: one run per method and seed, each a Ray task."""
    from core.cli.common import build_demo_first, template_from_args
    from core.models.spec import ModelSpec
    from core.sweep.unlearn import UnlearnJob, plan_runs, unlearn_sweep
    from core.unlearn.trainer import TrainConfig

    missing = [flag for flag in ("method", "base", "forget", "out") if not getattr(args, flag)]
    if missing:
        raise UserError(f"unlearn needs {', '.join('--' + m for m in missing)} (or --list)")
    cluster = cluster_settings(args)
    runs = plan_runs(args.method.split(","), _seeds(args), given, Path(args.out))
    build_demo_first([ModelSpec.parse(args.base)])
    config = TrainConfig(steps=args.steps, lr=args.lr or (1e-4 if args.lora else 1e-5), batch_size=args.batch_size,
                         save_every=args.save_every, seed=args.seed, max_grad_norm=args.max_grad_norm, bf16=args.bf16,
                         chat=template_from_args(args, [args.base]))  # as `unlearn` builds it  # fmt: skip
    lora = (args.lora_rank, args.lora_alpha, args.lora_targets) if args.lora else None
    job = UnlearnJob(args.base, args.device, args.forget, args.retain, args.refusals, config, lora)
    outcomes = unlearn_sweep(job, runs, cluster, Path(args.out))
    for outcome in outcomes:
        if outcome.state != "failed":
            found = outcome.result
            sys.stdout.write(f"{outcome.task.label}: {len(found['checkpoints'])} checkpoint(s) in {found['out']}; "
                             f"final {found['final']}\n")  # fmt: skip
    _fail_if([(o.task.label, o.error or "failed") for o in outcomes if o.state == "failed"])
    return 0
