"""`python -m core robustness`: attacks that try to bring forgotten knowledge back; a table, JSON and CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.attacks.base import ATTACKS, DEFAULT_EPSILON, RobustnessSettings, describe_attacks
from core.attacks.runner import RobustnessResult, check_attacks, load_robustness_data, run_attacks
from core.cli.common import (
    add_option_arguments,
    add_pair_arguments,
    add_template_argument,
    bounded_int,
    pair_from_args,
    template_from_args,
)
from core.cli.sweep import add_ray_arguments, run_robustness_sweep
from core.common.cache import atomic_write_text
from core.common.errors import UserError
from core.common.limits import MAX_BATCH_SIZE


def write_result(result: RobustnessResult, out: Path) -> tuple[Path, Path]:
    """robustness.json (RobustnessResult.from_json reads it) and robustness.csv (one row per outcome) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "robustness.json", result.to_json())
    atomic_write_text(out / "robustness.csv", result.to_frame().to_csv(index=False))
    return out / "robustness.json", out / "robustness.csv"


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `robustness [--base SPEC --unlearned SPEC] --data DIR|demo --attacks … --out DIR`."""
    parser = commands.add_parser("robustness", help="attacks that try to bring forgotten knowledge back (recovery %%)")
    add_pair_arguments(parser)
    parser.add_argument("--data", help="split folder with forget.jsonl (retain.jsonl for controls) or 'demo'")
    parser.add_argument("--attacks", nargs="+", help="attack names (default: all that can run here); see --list")
    parser.add_argument("--out", type=Path, help="folder for robustness.json and robustness.csv")
    parser.add_argument("--items", type=int, help="attack only the first N forget items")
    parser.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH_SIZE), default=RobustnessSettings.batch_size)
    add_template_argument(parser, legacy="--no-chat")
    parser.add_argument("--no-attack-base", action="store_true", help="do not also apply the attacks to the base")
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON, help="smallest base−unlearned gap measured")
    add_option_arguments(parser, ATTACKS.options("relearn"))  # as the relearning attack declares them
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    add_ray_arguments(parser, "each attack")
    parser.set_defaults(handler=run_robustness)
    return parser


def _settings(args: argparse.Namespace) -> RobustnessSettings:
    """The run's settings from the parsed options; the template (a name or file, which every encoding accepts in
    place of the chat flag) defaults to the pair's own: plain for the demo models, as their evaluation."""
    return RobustnessSettings(
        chat=template_from_args(args, [getattr(args, "base", None), getattr(args, "unlearned", None)]),
        batch_size=args.batch_size,
        max_items=args.items,
        epsilon=args.epsilon,
        attack_base=not args.no_attack_base,
        relearn_items=args.relearn_items,
        relearn_steps=args.relearn_steps,
        relearn_lr=args.relearn_lr,
        lora_rank=args.lora_rank,
        seed=args.seed,
    )


def run_robustness(args: argparse.Namespace) -> int:
    """Run the attacks with a progress bar, write the files, print the headline table (or JSON)."""
    from tqdm.auto import tqdm

    if args.list:
        sys.stdout.write(describe_attacks() + "\n")
        return 0
    if args.ray:  # one Ray task per attack (core.sweep)
        return run_robustness_sweep(args)
    if not args.data or not args.out:
        raise UserError("robustness needs --data DIR|demo and --out DIR (or --list)")
    attacks = [part for entry in args.attacks for part in entry.split(",")] if args.attacks else None
    settings = _settings(args)
    if attacks is not None:
        check_attacks(attacks)
    data = load_robustness_data(args.data)
    pair = pair_from_args(args)
    with tqdm(total=100, desc="robustness", unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}") as bar:

        def show(fraction: float, message: str) -> None:
            bar.n = 100 * fraction
            bar.set_postfix_str(message, refresh=True)

        result = run_attacks(pair, data, attacks, settings, progress=show)
    json_path, csv_path = write_result(result, args.out)
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    columns = ["attack", "variant", "n_items", "reference_base", "reference_unlearned", "attacked_unlearned",
               "attacked_base", "recovery_pct"]  # fmt: skip
    table = result.to_frame()
    table = table[table["headline"]][columns]
    lines = [
        f"forget probability on {result.n_items} items: base {result.base:.4f}, unlearned {result.unlearned:.4f}",
        *([f"note: {result.note}"] if result.note else []),
        table.to_string(index=False, float_format="{:.4f}".format, na_rep="n/a"),
        f"wrote {json_path} and {csv_path}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
