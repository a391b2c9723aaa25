"""Command lines shared by the CLI tests of every tier (tests/ is on sys.path: tests/conftest.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def pair_args(base: Path | str, unlearned: Path | str, prompt: str, answer: str) -> list[str]:
    """A model pair and one probe as the pair commands (probe, attribute, lens) take them."""
    return ["--base", str(base), "--unlearned", str(unlearned), "--prompt", prompt, "--answer", answer]


def run_attribute_cli(capsys, *argv: str) -> tuple[int, str]:
    """`attribute ARGV` through its own parser: the handler's exit status and what it printed."""
    from core.cli.attribute import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["attribute", *argv])
    status = args.handler(args)
    return status, capsys.readouterr().out
