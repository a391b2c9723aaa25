"""`python -m core demo`: build the demo experiment in the foreground (progress bar) or in the background."""

from __future__ import annotations

import argparse
import os
import sys
import time

from core.cli.common import demo_progress_bar
from core.unlearn.demo import DemoExperiment, start_background_build
from core.unlearn.recipes import DEFAULT_UNLEARNED, RECIPES, TARGET, UNLEARNED


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `demo` on the main CLI's subcommands."""
    parser = commands.add_parser("demo", help="build the demo experiment (target, oracle, unlearning runs)")
    parser.add_argument("--quick", action="store_true", help="a reduced experiment through the same code path")
    parser.add_argument(
        "--background",
        action="store_true",
        help="start the build in a detached process (log: build.log next to status.json) and return at once; "
        "nothing is started when the demo is already built or being built",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="lower this build's CPU priority by N first (POSIX niceness; a background build uses 10, so the "
        "dashboard a person is using meanwhile is served before the training steps)",
    )
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Build every missing stage with a progress bar, then print where each run is."""
    experiment = DemoExperiment(RECIPES["quick"] if args.quick else None)
    if args.nice > 0 and hasattr(os, "nice"):  # before any training thread exists: every one inherits it
        os.nice(args.nice)
    if args.background:
        sys.stdout.write(start_background_build(experiment, args.quick) + "\n")
        return 0
    with demo_progress_bar() as show:
        began = time.perf_counter()
        experiment.build(progress=show)
    lines = [f"demo ({experiment.recipe.name}) built in {time.perf_counter() - began:.0f} s under {experiment.root}"]
    for stage in experiment.recipe.stages:
        checkpoints = experiment.checkpoints(stage.name)
        lines.append(f"  {stage.name:<9} {experiment.run_dir(stage.name)}  ({len(checkpoints)} checkpoint(s))")
    lines.append(f"open it: the dashboard's default pair is demo:{TARGET} vs demo:{UNLEARNED} (= {DEFAULT_UNLEARNED})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
