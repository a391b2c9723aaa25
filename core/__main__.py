"""Command line: python -m core <command> … (each command's module registers its own parser)."""

from __future__ import annotations

import argparse
import logging
import struct
import sys

from core.attribution import add_attribute_parser
from core.demo import add_demo_parser
from core.embedded import add_model_parser
from core.errors import UserError
from core.evaluate import add_evaluate_parser
from core.ingest import add_ingest_parser
from core.lens import add_lens_parser
from core.limits import is_out_of_memory
from core.probe import add_probe_parser
from core.report import add_report_parser
from core.robustness import add_robustness_parser
from core.unlearn.cli import add_unlearn_parser

log = logging.getLogger("core")


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
    """Run one command; any failure is one line on stderr and a non-zero exit status, never a traceback (with
    --verbose the traceback of an unexpected error is logged as well)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as exc:
        message, status = describe_failure(exc)
        if status == 1 and args.verbose:
            log.exception("unexpected error")
        sys.stderr.write(f"error: {message}\n")
        return status


def describe_failure(exc: Exception) -> tuple[str, int]:
    """(one-line message, exit status): 2 for bad input, 3 for out of memory, 1 for anything unexpected."""
    if isinstance(exc, UserError):  # ours, written to be shown whole
        return str(exc), 2
    if is_out_of_memory(exc):
        return "out of memory; try a smaller batch, shorter inputs or a smaller dtype", 3
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read (JSON or another nested format)", 2
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})", 2
    if isinstance(exc, struct.error):
        return f"a file is truncated or corrupt (its binary layout cannot be read: {exc})", 2
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or _one_line(exc)}", 2
    return f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with -v for the traceback)", 1


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
