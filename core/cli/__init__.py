"""Command line: python -m core <command> … One module per command registers its parser and holds its handler;
argparse lives only in this package, the library modules below it never see parsed arguments."""

from __future__ import annotations

import argparse
import logging
import struct
import sys

from core.cli import attribute, demo, evaluate, ingest, lens, model, probe, report, robustness, unlearn
from core.common.errors import UserError
from core.common.limits import is_out_of_memory

log = logging.getLogger("core")

COMMANDS = (model, demo, probe, unlearn, evaluate, attribute, lens, ingest, report, robustness)  # in --help order


def build_parser() -> argparse.ArgumentParser:
    """The main parser with every command's subparser (each sets `handler` to the function that runs it)."""
    parser = argparse.ArgumentParser(prog="python -m core", description="Unlearning Lens, headless.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
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
