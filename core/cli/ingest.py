"""`python -m core ingest`: read open-unlearning / legacy TOFU / lm-eval result files and print the summary table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.evaluation import ingest  # the module, looked up at call time: tests replace ingest.ingest


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `ingest PATH… [--oracle DIR] [--json]` on the main CLI's subcommands."""
    parser = commands.add_parser("ingest", help="read open-unlearning / legacy TOFU / lm-eval result files")
    parser.add_argument("paths", nargs="+", type=Path, help="result files or folders (searched recursively)")
    parser.add_argument("--oracle", type=Path, help="the retain-only model's results: computes missing forget quality")
    parser.add_argument("--model", help="model name for every run found (default: from folder names)")
    parser.add_argument("--method", help="method name for every run found (default: from folder names)")
    parser.add_argument("--step", type=int, help="training step for every run found (default: checkpoint-<step>)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON (IngestResult.from_json)")
    parser.set_defaults(handler=run_ingest)
    return parser


def run_ingest(args: argparse.Namespace) -> int:
    """Ingest, then print the summary table (or JSON); warnings go to the log."""
    result = ingest.ingest(args.paths, oracle=args.oracle, model=args.model, method=args.method, step=args.step)
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    table = result.summary.drop(columns="source")
    sys.stdout.write((table.to_string(index=False) if not table.empty else "(no metrics)") + "\n")
    return 0


def ingest_main(argv: Sequence[str]) -> int:
    """`python -m core ingest …` on its own: argv holds what follows `ingest`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ingest", *argv])
    try:
        return args.handler(args)
    except Exception as exc:
        from core.cli import describe_failure  # here: core.cli imports this module

        message, status = describe_failure(exc)
        sys.stderr.write(f"error: {message}\n")
        return status
