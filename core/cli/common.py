"""Pieces several commands share: the options that name a model pair, and bounded whole-number arguments."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from core.common import Option
from core.common.errors import UserError
from core.models.offload import parse_size
from core.models.pair import ModelPair
from core.models.spec import DEFAULT_BASE, DEFAULT_UNLEARNED, ModelSpec
from core.unlearn.demo import DemoExperiment, DemoProgress, build_demo_models, demo_model_names


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type` accepting whole numbers in [low, high]: argparse then prints a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    parse.__name__ = "whole number"
    return parse


def add_option_arguments(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """One `--name` flag per declared option (core.common.options), typed, bounded and explained by the declaration:
    the command line offers what the registry's entries declare, as the dashboard's controls do."""
    for spec in options:
        flag = "--" + spec.name.replace("_", "-")
        help_text = f"{spec.help} ({spec.range})" if spec.range else spec.help
        if spec.type is bool:
            parser.add_argument(flag, action="store_true", default=spec.default, help=spec.help)
        elif spec.choices:
            parser.add_argument(flag, choices=spec.choices, type=spec.type, default=spec.default, help=spec.help)
        elif spec.type is int and spec.min is not None:
            high = int(spec.max) if spec.max is not None else sys.maxsize
            parser.add_argument(flag, type=bounded_int(int(spec.min), high), default=spec.default, help=help_text)
        else:
            parser.add_argument(flag, type=spec.type, default=spec.default, help=help_text)


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options that name a pair; without --base/--unlearned the embedded demo pair is used."""
    parser.add_argument("--base", help="base model SPEC: folder, hub id, .gguf, adapter folder or demo:NAME")
    parser.add_argument("--unlearned", help="unlearned model SPEC (same forms; PATH::adapter=DIR for an adapter)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--device-map-auto", action="store_true", help="spread a large model over several GPUs")
    parser.add_argument("--trust-remote-code", action="store_true", help="run model code from the model folder")
    parser.add_argument("--allow-unsafe-weights", action="store_true", help="allow pickle .bin weights")
    parser.add_argument(
        "--skip-memory-check", action="store_true", help="load even when the weights look larger than free memory"
    )
    parser.add_argument(
        "--max-memory",
        type=memory_size,
        metavar="SIZE",
        help="memory budget for the pair's weights on the device (e.g. 12GB, 500MB): layers beyond it are offloaded "
        "(CPU RAM behind a GPU, then disk) and fetched per pass, same numbers, slower; chosen automatically when "
        "the pair does not fit",
    )


def pair_from_args(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> ModelPair:
    """Build the pair named by `add_pair_arguments` options."""
    if bool(args.base) != bool(args.unlearned):
        raise UserError("give both --base and --unlearned, or neither (for the embedded demo pair)")
    options = {
        "dtype": args.dtype,
        "device": args.device,
        "trust_remote_code": args.trust_remote_code,
        "allow_unsafe_weights": args.allow_unsafe_weights,
        "device_map": "auto" if args.device_map_auto else None,
    }
    base = ModelSpec.parse(args.base or DEFAULT_BASE, **options)
    unlearned = ModelSpec.parse(args.unlearned or DEFAULT_UNLEARNED, **options)
    build_demo_first([base, unlearned])
    skip = getattr(args, "skip_memory_check", False)
    budget = getattr(args, "max_memory", None)
    return ModelPair.load(base, unlearned, progress, memory_check=False if skip else None, max_memory=budget)


def memory_size(text: str) -> int:
    """An argparse `type` for --max-memory: a size such as 12GB (core.models.offload.parse_size)."""
    try:
        return parse_size(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@contextlib.contextmanager
def demo_progress_bar(desc: str = "demo") -> Iterator[DemoProgress]:
    """A progress bar (on stderr) fed by a demo build's status updates."""
    from tqdm.auto import tqdm

    with tqdm(total=100, desc=desc, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}") as bar:

        def show(status: dict[str, Any]) -> None:
            bar.n = 100 * status["fraction"]
            bar.set_postfix_str(status["message"], refresh=True)

        yield show


def build_demo_first(specs: Iterable[ModelSpec]) -> None:
    """Build the demo models that `demo:NAME` specs among `specs` name and that are not built yet, with a progress
    bar. Resolving a demo spec never trains, so a command that takes model specs builds them here first."""
    specs = list(specs)
    experiment = DemoExperiment()
    if experiment.stages_to_build(demo_model_names(specs)):
        with demo_progress_bar("building demo models") as show:
            build_demo_models(specs, show, experiment)


def add_template_argument(parser: argparse.ArgumentParser, legacy: str | None = None) -> None:
    """`--template NAME|FILE` (core.scoring.templates; default: each model's own: plain for the demo models, the
    chat template for an instruct model). `legacy` keeps an older flag as an alias: "--no-chat" (→ plain) or
    "--chat" (→ the chat template)."""
    from core.scoring.templates import list_templates

    parser.add_argument(
        "--template",
        help=f"prompt template: {', '.join(list_templates())} or a .json file (default: the model's own)",
    )
    if legacy == "--no-chat":
        parser.add_argument("--no-chat", action="store_true", help="the same as --template plain")
    elif legacy == "--chat":
        parser.add_argument("--chat", action="store_true", help="the same as --template chat")


def template_from_args(args: argparse.Namespace, specs: Iterable[str | None] = ()) -> str:
    """The template name or file the options choose, else the default of the models named by `specs` (spec
    texts; the embedded demo pair when none is given)."""
    from core.scoring.templates import default_for_specs, load_template

    chosen = getattr(args, "template", None)
    if getattr(args, "no_chat", False):
        chosen = chosen or "plain"
    if getattr(args, "chat", False):
        chosen = chosen or "chat"
    if chosen is not None:
        load_template(chosen)  # a clear error for an unknown name before any model loads
        return chosen
    texts = [text for text in specs if text]
    return default_for_specs(texts or [DEFAULT_BASE])
