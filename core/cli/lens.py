"""`python -m core lens`: the layer view (logit lens, hidden-state drift, weight-change map) as a table or JSON."""

from __future__ import annotations

import argparse
import sys

from core.analyses.lens import VIEWS, drift_sets, hidden_state_drift, logit_lens, weight_change
from core.cli.common import add_pair_arguments, bounded_int, pair_from_args
from core.common.errors import UserError
from core.common.limits import MAX_DRIFT_ITEMS


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `lens` on the main CLI's subcommands."""
    parser = commands.add_parser(
        "lens",
        help="the layer view: logit lens, hidden-state drift (forget vs retain) or the weight-change map",
        description="--view logit (default): the answer's log-prob and rank at every layer for --prompt/--answer. "
        "--view drift: per-layer cosine, norm change and distance between the two models' hidden states over the "
        "forget and retain sets (files, or the demo's). --view weights: ‖ΔW‖/‖W‖ per parameter.",
    )
    add_pair_arguments(parser)
    parser.add_argument("--view", choices=VIEWS, default="logit", help="what to compute (default: logit)")
    parser.add_argument("--prompt", help="the question (logit view)")
    parser.add_argument("--answer", help="the answer whose tokens are read at every layer (logit view)")
    parser.add_argument("--forget", help="forget set file, JSONL/JSON/CSV/parquet (drift view; default: the demo's)")
    parser.add_argument("--retain", help="retain set file (drift view; default: the demo's)")
    parser.add_argument(
        "--items",
        type=bounded_int(1, MAX_DRIFT_ITEMS),
        default=16,
        help=f"items per set (drift view; 1..{MAX_DRIFT_ITEMS})",
    )
    parser.add_argument("--chat", action="store_true", help="wrap the prompts in the model's chat template")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (LensResult / DriftResult / WeightChangeResult)"
    )
    parser.set_defaults(handler=run_lens)
    return parser


def run_lens(args: argparse.Namespace) -> int:
    """Compute the chosen view, then print a table (or its JSON)."""
    if args.view == "logit" and not (args.prompt and args.answer):
        raise UserError("the logit view needs --prompt and --answer")
    sets = drift_sets({"forget": args.forget, "retain": args.retain}, args.items) if args.view == "drift" else None
    pair = pair_from_args(args)
    if args.view == "drift":
        drift = hidden_state_drift(pair, sets, chat=args.chat)
        if args.json:
            sys.stdout.write(drift.to_json() + "\n")
            return 0
        frame = drift.to_frame().pivot(index="layer", columns="set", values=["cosine", "norm_change", "distance"])
        sys.stdout.write(frame.to_string(float_format="{:.4f}".format) + "\n")
        return 0
    if args.view == "weights":
        weights = weight_change(pair)
        if args.json:
            sys.stdout.write(weights.to_json() + "\n")
            return 0
        frame = weights.to_frame().sort_values("relative_change", ascending=False)
        sys.stdout.write(frame.head(40).to_string(index=False, float_format="{:.4g}".format) + "\n")
        return 0
    result = logit_lens(pair, args.prompt, args.answer, args.chat)
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    frame = result.to_frame().groupby(["layer", "side"])[["logprob", "rank"]].mean().unstack("side")
    sys.stdout.write(frame.to_string(float_format="{:.3f}".format) + "\n")
    for knowledge in result.hidden_knowledge().values():
        sys.stdout.write(
            f"{knowledge.side}: peak at layer {knowledge.peak_layer} ({knowledge.peak_logprob:.3f}), final "
            f"{knowledge.final_logprob:.3f}, hidden-knowledge score {knowledge.score:.3f} nats/token\n"
        )
    return 0
