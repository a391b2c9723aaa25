"""`python -m core model`: prepare the embedded SmolLM2 model and print its folder."""

from __future__ import annotations

import argparse
import sys

from core.models.embedded import ensure_embedded_model


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `model` on the main CLI's subcommands."""
    parser = commands.add_parser("model", help="prepare the embedded SmolLM2 model and print its folder")
    parser.set_defaults(handler=run_model)


def run_model(args: argparse.Namespace) -> int:
    """Fetch (once) and convert the embedded model, then print where it is."""
    sys.stdout.write(f"{ensure_embedded_model()}\n")
    return 0
