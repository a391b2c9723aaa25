"""`python -m core attribute`: which prompt tokens drive the answer, base vs unlearned, as tables or JSON."""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from core.analyses.attribution import ATTRIBUTION_METHODS, GRANULARITIES, AttributionSettings, attribute
from core.cli.common import add_option_arguments, add_pair_arguments, pair_from_args
from core.common import options_of
from core.common.errors import UserError
from core.present.figures.attribution import completeness_warning


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `attribute` on the main CLI's subcommands."""
    parser = commands.add_parser("attribute", help="which prompt tokens drive the answer, base vs unlearned")
    add_pair_arguments(parser)
    parser.add_argument("--prompt")
    parser.add_argument("--answer")
    parser.add_argument("--method", default="integrated_gradients", help="see --list")
    parser.add_argument("--per-token", action="store_true", help="one row per answer token (else the whole answer)")
    # the methods' own knobs, as the methods declare them (the Attribution page draws the same options)
    add_option_arguments(
        parser, options_of(AttributionSettings, "baseline", "n_steps", "n_samples", "window", "seed", "lrp_rule")
    )
    parser.add_argument("--granularity", choices=GRANULARITIES, default="token")
    parser.add_argument("--include-answer-prefix", action="store_true", help="also attribute to earlier answer tokens")
    parser.add_argument("--attribute-special", action="store_true", help="attribute to special tokens (BOS…) too")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--json", action="store_true", help="print one JSON object (AttributionResult.from_json)")
    parser.add_argument("--list", action="store_true", help="list the attribution methods and exit")
    parser.set_defaults(handler=run_attribute)
    return parser


def run_attribute(args: argparse.Namespace) -> int:
    """Attribute, then print the maps (or JSON); `--list` prints the registry."""
    if args.list:
        if args.json:
            sys.stdout.write(json.dumps({name: m.description for name, m in ATTRIBUTION_METHODS.items()}) + "\n")
        else:
            sys.stdout.write("".join(f"{name:22s} {m.description}\n" for name, m in ATTRIBUTION_METHODS.items()))
        return 0
    if not args.prompt or args.answer is None:
        raise UserError("attribute needs --prompt and --answer (or --list)")
    settings = AttributionSettings(
        per_token=args.per_token,
        baseline=args.baseline,
        granularity=args.granularity,
        n_steps=args.n_steps,
        n_samples=args.n_samples,
        window=args.window,
        include_answer_prefix=args.include_answer_prefix,
        keep_special=not args.attribute_special,
        seed=args.seed,
        lrp_rule=args.lrp_rule,
    )
    result = attribute(pair_from_args(args), args.prompt, args.answer, args.method, args.chat, settings)
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    for side in ("base", "unlearned", "delta"):
        table = pd.DataFrame(getattr(result, side), index=result.answer_tokens, columns=result.prompt_tokens)
        sys.stdout.write(f"{side}\n{table.T.to_string(float_format='{:+.3f}'.format)}\n\n")
    if result.convergence_delta:
        sys.stdout.write(f"convergence delta: {json.dumps(result.convergence_delta)}\n")
        warning = completeness_warning(result)
        if warning:
            sys.stderr.write(warning + "\n")
    return 0
