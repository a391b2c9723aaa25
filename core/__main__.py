"""Command line: python -m core <command> … (each command's module registers its own parser)."""

from __future__ import annotations

import argparse
import logging
import sys

from core.attribution import add_attribute_parser
from core.demo import add_demo_parser
from core.embedded import add_model_parser
from core.errors import UserError
from core.evaluate import add_evaluate_parser
from core.ingest import add_ingest_parser
from core.lens import add_lens_parser
from core.probe import add_probe_parser
from core.report import add_report_parser
from core.robustness import add_robustness_parser
from core.unlearn.cli import add_unlearn_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Unlearning Lens, headless.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in (
        add_model_parser,
        add_demo_parser,
        add_probe_parser,
        add_unlearn_parser,
        add_evaluate_parser,
        add_attribute_parser,
        add_lens_parser,
        add_ingest_parser,
        add_report_parser,
        add_robustness_parser,
    ):
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except MemoryError:
        sys.stderr.write("error: out of memory; try a smaller batch, shorter inputs or a smaller dtype\n")
        return 3


if __name__ == "__main__":
    sys.exit(main())
