"""`python -m core lens`: the layer view (logit lens, activation patching, depth score, hidden-state drift,
weight-change map) as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from core.analyses.lens import VIEWS, drift_sets, hidden_state_drift, logit_lens, weight_change
from core.analyses.patching import POSITIONS, ModelSource, depth_over_sets, patch_curve
from core.cli.common import add_pair_arguments, bounded_int, build_demo_first, pair_from_args
from core.common.errors import UserError
from core.common.limits import MAX_DRIFT_ITEMS
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.present import numbers

CAUSAL_VIEWS = ("patching", "depth")  # activation patching for one prompt; the depth score over forget vs retain
ALL_VIEWS = (*VIEWS, *CAUSAL_VIEWS)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `lens` on the main CLI's subcommands."""
    parser = commands.add_parser(
        "lens",
        help="the layer view: logit lens, activation patching, depth score, hidden-state drift or weight changes",
        description="--view logit (default): the answer's log-prob and rank at every layer for --prompt/--answer. "
        "--view patching: the unlearned model run on the base model's residual stream after each layer (and the "
        "reverse), the answer's log-prob per layer and the depth score (docs/CAUSAL.md). --view depth: the depth "
        "score over the forget and retain sets. --view drift: per-layer cosine, norm change and distance between "
        "the two models' hidden states over the forget and retain sets (files, or the demo's). --view weights: "
        "‖ΔW‖/‖W‖ per parameter.",
    )
    add_pair_arguments(parser)
    parser.add_argument("--view", choices=ALL_VIEWS, default="logit", help="what to compute (default: logit)")
    parser.add_argument("--prompt", help="the question (logit and patching views)")
    parser.add_argument("--answer", help="the answer followed through the layers (logit and patching views)")
    parser.add_argument("--forget", help="forget set file, JSONL/JSON/CSV/parquet (drift, depth; default: the demo's)")
    parser.add_argument("--retain", help="retain set file (drift and depth views; default: the demo's)")
    parser.add_argument(
        "--items",
        type=bounded_int(1, MAX_DRIFT_ITEMS),
        default=16,
        help=f"items per set (drift and depth views; 1..{MAX_DRIFT_ITEMS})",
    )
    parser.add_argument(
        "--positions", choices=POSITIONS, default="all", help="patch every position, or the answer's only"
    )
    parser.add_argument(
        "--oracle", help="patching/depth: an oracle model SPEC (never taught the forget set), e.g. demo:oracle"
    )
    parser.add_argument("--chat", action="store_true", help="wrap the prompts in the model's chat template")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (LensResult / PatchingResult / DepthResult / DriftResult / WeightChangeResult)",
    )
    parser.set_defaults(handler=run_lens)
    return parser


def _oracle(args: argparse.Namespace) -> ModelSource | None:
    """The oracle as a model source: its own pair (both sides the oracle, so one copy of its weights)."""
    if not args.oracle:
        return None
    spec = ModelSpec.parse(args.oracle, dtype=args.dtype, device=args.device)
    build_demo_first([spec])
    oracle = ModelPair.load(spec, spec)
    return lambda: oracle.use("base", "patching")


def _write(text: str) -> int:
    sys.stdout.write(text + "\n")
    return 0


def run_lens(args: argparse.Namespace) -> int:
    """Compute the chosen view, then print a table (or its JSON)."""
    if args.view in ("logit", "patching") and not (args.prompt and args.answer):
        raise UserError(f"the {args.view} view needs --prompt and --answer")
    if args.oracle and args.view not in CAUSAL_VIEWS:
        raise UserError("--oracle is read by the patching and depth views only")
    needs_sets = args.view in ("drift", "depth")
    sets = drift_sets({"forget": args.forget, "retain": args.retain}, args.items) if needs_sets else None
    pair = pair_from_args(args)
    views: dict[str, Callable[[], int]] = {
        "drift": lambda: _drift(pair, sets, args),
        "weights": lambda: _weights(pair, args),
        "patching": lambda: _patching(pair, args),
        "depth": lambda: _depth(pair, sets, args),
        "logit": lambda: _logit(pair, args),
    }
    return views[args.view]()


def _drift(pair: ModelPair, sets: dict, args: argparse.Namespace) -> int:
    drift = hidden_state_drift(pair, sets, chat=args.chat)
    if args.json:
        return _write(drift.to_json())
    frame = drift.to_frame().pivot(index="layer", columns="set", values=["cosine", "norm_change", "distance"])
    return _write(frame.to_string(float_format=numbers.number))


def _weights(pair: ModelPair, args: argparse.Namespace) -> int:
    weights = weight_change(pair)
    if args.json:
        return _write(weights.to_json())
    frame = weights.to_frame().sort_values("relative_change", ascending=False)
    return _write(frame.head(40).to_string(index=False, float_format=numbers.number))


def _patching(pair: ModelPair, args: argparse.Namespace) -> int:
    result = patch_curve(pair, args.prompt, args.answer, args.chat, args.positions, _oracle(args))
    if args.json:
        return _write(result.to_json())
    lines = [f"{'layer':>5}  {'unlearned←base':>14}  {'base←unlearned':>14}  {'erasure':>7}"]
    for layer, forward, reverse, erased in zip(
        result.layers, result.patched_logprob, result.reverse_logprob, result.erasure, strict=True
    ):
        lines.append(f"{layer:>5}  {numbers.number(forward):>14}  {numbers.number(reverse):>14}  {erased:>7.2f}")
    lines.append(
        f"base {numbers.number(result.base_logprob)}, unlearned {numbers.number(result.unlearned_logprob)} "
        f"nats/token; depth score {result.depth_score:.2f}"
        + ("" if result.oracle_depth_score is None else f", with the oracle {result.oracle_depth_score:.2f}")
    )
    return _write("\n".join(lines))


def _depth(pair: ModelPair, sets: dict, args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    oracle = _oracle(args)  # loaded before the bar starts
    with tqdm(total=sum(len(items) for items in sets.values()), desc="depth score", unit="item") as bar:
        result = depth_over_sets(pair, sets, args.chat, args.positions, oracle, lambda fraction, message: bar.update(1))
    if args.json:
        return _write(result.to_json())
    lines = []
    for name, scores in result.sets.items():
        oracle = "" if scores.mean_oracle_depth is None else f", with the oracle {scores.mean_oracle_depth:.3f}"
        lines.append(f"{name}: mean depth score {scores.mean_depth:.3f} over {scores.n_items} items{oracle}")
    return _write("\n".join(lines))


def _logit(pair: ModelPair, args: argparse.Namespace) -> int:
    result = logit_lens(pair, args.prompt, args.answer, args.chat)
    if args.json:
        return _write(result.to_json())
    frame = result.to_frame().groupby(["layer", "side"])[["logprob", "rank"]].mean().unstack("side")
    lines = [frame.to_string(float_format=numbers.number)]
    for knowledge in result.hidden_knowledge().values():
        lines.append(
            f"{knowledge.side}: peak at layer {knowledge.peak_layer} ({numbers.number(knowledge.peak_logprob)}), "
            f"final {numbers.number(knowledge.final_logprob)}, hidden-knowledge score "
            f"{numbers.number(knowledge.score)} nats/token"
        )
    return _write("\n".join(lines))
