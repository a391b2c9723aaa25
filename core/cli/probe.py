"""`python -m core probe`: per-token likelihood shift between base and unlearned, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from core.analyses.probe import DEFAULT_TOP_K, GenerationSettings, ProbeRequest, generate, score
from core.cli.common import add_pair_arguments, add_template_argument, bounded_int, pair_from_args, template_from_args
from core.common.limits import MAX_NEW_TOKENS, MAX_TOP_K


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `probe` on the main CLI's subcommands."""
    parser = commands.add_parser(
        "probe", help="per-token likelihood shift between base and unlearned", conflict_handler="resolve"
    )
    add_pair_arguments(parser)
    add_many_arguments(parser)  # --unlearned repeatable, --run (core.analyses.multi)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--answer", help="reference answer to score (else the prompt's own tokens are scored)")
    add_template_argument(parser, legacy="--chat")
    parser.add_argument(
        "--score-end", action="store_true",
        help="also score the template's end-of-turn tokens and EOS after the answer, as the evaluation does",
    )  # fmt: skip
    parser.add_argument(
        "--top-k", type=bounded_int(0, MAX_TOP_K), default=DEFAULT_TOP_K, help=f"0..{MAX_TOP_K} alternatives per token"
    )
    parser.add_argument("--generate", action="store_true", help="also generate from both models and cross-score")
    parser.add_argument("--max-new-tokens", type=bounded_int(1, MAX_NEW_TOKENS), default=48)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    """Score (and optionally generate), then print the token table and totals (or one JSON object)."""
    if len(args.unlearned or []) > 1 or args.run:
        return run_probe_many(args)
    args.unlearned = args.unlearned[0] if args.unlearned else None
    template = template_from_args(args, [args.base, args.unlearned])
    pair = pair_from_args(args)
    request = ProbeRequest(args.prompt, args.answer)
    result = score(pair, [request], chat=template, top_k=args.top_k, score_end=args.score_end)[0]
    payload = result.to_dict()
    if args.generate:
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
        generated = generate(pair, args.prompt, chat=template, settings=settings, top_k=args.top_k)
        payload["generation"] = generated.to_dict()
    if args.json:
        sys.stdout.write(json.dumps(payload) + "\n")
        return 0
    frame = result.to_frame()[
        ["position", "token", "logprob_base", "logprob_unlearned", "delta", "rank_base", "rank_unlearned", "kl"]
    ]
    if result.end_tokens:  # the template's end-of-turn / EOS rows, scored as the evaluation scores them
        frame.insert(2, "part", ["answer"] * (len(frame) - result.end_tokens) + ["end (scored)"] * result.end_tokens)
    sys.stdout.write(f"template: {template}\n" + frame.to_string(index=False) + "\n")
    sys.stdout.write(
        f"answer log-prob: base {result.answer_logprob_base:.3f}  "
        f"unlearned {result.answer_logprob_unlearned:.3f}  Δ {result.delta:+.3f}"
        f"{'  (prompt truncated to fit the context)' if result.truncated else ''}\n"
    )
    if args.generate:
        sys.stdout.write(f"base:      {payload['generation']['base_text']}\n")
        sys.stdout.write(f"unlearned: {payload['generation']['unlearned_text']}\n")
    return 0


def add_many_arguments(parser: argparse.ArgumentParser) -> None:
    """--unlearned repeatable (it replaces add_pair_arguments' single one) and --run: several unlearned models."""
    parser.add_argument(
        "--unlearned",
        action="append",
        help="unlearned model SPEC (PATH::adapter=DIR for an adapter); repeat it for several models",
    )
    parser.add_argument(
        "--run", action="append", default=[], help="an unlearning run folder: adds every checkpoint in step order"
    )


def run_probe_many(args: argparse.Namespace) -> int:
    """Several unlearned models (repeated --unlearned, --run): one JSON object {"models", "results"}, or a table
    of each model's answer log-prob, each result the probe of base vs that model."""
    from tqdm.auto import tqdm

    from core.analyses.multi import ModelEntry, ModelSet, probe_many, run_entries
    from core.cli.common import build_demo_first
    from core.common.errors import UserError
    from core.models.spec import DEFAULT_BASE, ModelSpec

    if args.generate:
        raise UserError("--generate takes one unlearned model; leave it out to probe several")
    options = {"dtype": args.dtype, "device": args.device, "trust_remote_code": args.trust_remote_code,
               "allow_unsafe_weights": args.allow_unsafe_weights,
               "device_map": "auto" if args.device_map_auto else None}  # fmt: skip
    base = ModelSpec.parse(args.base or DEFAULT_BASE, **options)
    entries = [ModelEntry(ModelSpec.parse(text, **options), text) for text in args.unlearned or []]
    for run in args.run:
        entries += run_entries(run, ModelSpec(run, **options))
    build_demo_first([base, *(entry.spec for entry in entries)])
    models = ModelSet.load(base, entries, memory_check=False if args.skip_memory_check else None)
    with tqdm(total=1.0, desc="probing") as bar:
        template = template_from_args(args, [args.base, *(args.unlearned or [])])
        result = probe_many(models, ProbeRequest(args.prompt, args.answer), template, args.top_k,
                            progress=lambda f: bar.update(f - bar.n), score_end=args.score_end)  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return 0
    for label, probe in zip(result.models, result.results, strict=True):
        sys.stdout.write(f"{label}: answer log-prob {probe.answer_logprob_unlearned:.3f}  Δ {probe.delta:+.3f}\n")
    return 0
