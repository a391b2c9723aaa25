"""`python -m core report`: a self-contained HTML report (+ chart images and CSV tables) from results and probes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.analyses.probe import ProbeRequest
from core.cli.common import add_pair_arguments, build_demo_first, pair_from_args
from core.common.errors import UserError
from core.evaluation.ingest import ingest
from core.models.pair import ModelPair
from core.models.spec import DEFAULT_BASE, DEFAULT_UNLEARNED, DEMO_PREFIX, ModelSpec
from core.present.report.checkpoints import CheckpointsView, checkpoints_view
from core.present.report.export import EXPORT_FORMATS, export_all
from core.present.report.labels import parse_labels
from core.present.report.model import build_report
from core.present.report.parts import parse_probe, read_robustness
from core.present.report.pdf import require_chromium, write_pdf

log = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `report` on the main CLI's subcommands."""
    parser = commands.add_parser("report", help="a self-contained HTML report (+ chart images and CSV tables)")
    add_pair_arguments(parser)
    parser.add_argument("--pair", help="BASE,UNLEARNED: both specs at once (instead of --base/--unlearned)")
    parser.add_argument("--results", nargs="+", action="extend", default=[], help="result folders (repeatable)")
    parser.add_argument("--oracle", help="the oracle's result folder: computes forget quality where missing")
    parser.add_argument("--x-metric", help="tradeoff x axis (default: a forget-set metric)")
    parser.add_argument("--y-metric", help="tradeoff y axis (default: model utility or a retain metric)")
    parser.add_argument("--probe", action="append", default=[], help='"prompt|answer" (repeatable; last | splits)')
    parser.add_argument("--chat", action="store_true", help="wrap probe prompts in the model's chat template")
    parser.add_argument("--attribute", action="store_true", help="attribution view for each probe with an answer")
    parser.add_argument("--attribution-method", default="integrated_gradients", help="see `attribute --list`")
    parser.add_argument(
        "--lens", action="store_true",
        help="logit-lens layer view for each probe with an answer (and across checkpoints for --checkpoints)",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoints", action="append", default=[], metavar='"prompt|answer"',
        help="a Checkpoints view of this question: its answer under the base and every model of --run / "
        "--checkpoint-model (default with a demo base: every built demo checkpoint, the target and the oracle)",
    )  # fmt: skip
    parser.add_argument(
        "--run", action="append", default=[], metavar="DIR",
        help="an unlearning run folder for --checkpoints: every checkpoint in step order (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoint-model", action="append", default=[], metavar="SPEC",
        help="another model for --checkpoints, drawn as a reference line (target, oracle; demo:RUN@STEP joins its "
        "run's line) (repeatable)",
    )  # fmt: skip
    parser.add_argument("--robustness", type=Path, help="a robustness result: robustness.json or its folder")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=TEXT",
        help="a name to show: base=…, unlearned=… or RUN=… for a run of the results (repeatable)",
    )  # fmt: skip
    parser.add_argument("--notes", default="", help="text shown after the generated summary")
    parser.add_argument("--notes-file", type=Path, help="read the notes from a file")
    parser.add_argument("--title", default="Unlearning report")
    parser.add_argument("--images", type=Path, help="also write every chart (and every table as CSV) here")
    parser.add_argument("--image-format", action="append", choices=list(EXPORT_FORMATS), help="default: png")
    parser.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    parser.add_argument(
        "--pdf", nargs="?", const=True, default=None, metavar="PATH",
        help="also write the report as PDF (default: --out with .pdf), printed by the system Chromium",
    )  # fmt: skip
    parser.set_defaults(handler=run_report)
    return parser


def _split_pair(args: argparse.Namespace) -> None:
    """--pair BASE,UNLEARNED into args.base and args.unlearned."""
    if args.pair:
        if args.base or args.unlearned:
            raise UserError("give --pair or --base/--unlearned, not both")
        specs = [part.strip() for part in args.pair.split(",")]
        if len(specs) != 2 or not all(specs):
            raise UserError(f"--pair {args.pair!r}: expected BASE,UNLEARNED")
        args.base, args.unlearned = specs


def _pair_from_cli(args: argparse.Namespace, probes: Sequence[ProbeRequest]) -> ModelPair | None:
    """The pair named by --pair or --base/--unlearned; the demo pair when probes need one; else None (also for a
    --base alone with --checkpoints: that base is the checkpoints view's)."""
    if not (args.unlearned or probes) and (not args.base or args.checkpoints):
        return None
    return pair_from_args(args)


def _checkpoint_views(args: argparse.Namespace, progress: Callable[[str, float], None]) -> list[CheckpointsView]:
    """The --checkpoints views: the set (base: --base or the demo's; models: --checkpoint-model, --run, else the
    built demo models) loaded once, each question probed under it (and the lens with --lens); the set is let go
    before the pair loads."""
    from core.analyses.multi import ModelSet, demo_entries, run_entries, spec_entry

    if not args.checkpoints:
        if args.run or args.checkpoint_model:
            raise UserError("--run and --checkpoint-model choose the models of --checkpoints 'prompt|answer'")
        return []
    requests = [parse_probe(text) for text in args.checkpoints]
    options = {"dtype": args.dtype, "device": args.device, "trust_remote_code": args.trust_remote_code,
               "allow_unsafe_weights": args.allow_unsafe_weights}  # fmt: skip
    base = ModelSpec.parse(args.base or DEFAULT_BASE, **options)
    entries = [spec_entry(text, base) for text in args.checkpoint_model]
    for run in args.run:
        entries += run_entries(run, base)
    demo = base.source.startswith(DEMO_PREFIX)
    if not entries and demo:
        entries = [entry for _, entry in demo_entries(base, exclude=[args.base or DEFAULT_BASE])]
    if not entries:
        built = " (no demo model is built yet: `python -m core demo` builds them)" if demo else ""
        raise UserError(f"--checkpoints needs models: --run DIR or --checkpoint-model SPEC{built}")
    build_demo_first([base, *(entry.spec for entry in entries)])
    progress(f"loading {len(entries)} model(s) for the checkpoints view", 0.0)
    models = ModelSet.load(base, entries, memory_check=False if args.skip_memory_check else None)
    name = parse_labels(args.label).get("base", args.base or DEFAULT_BASE)
    views = []
    for i, request in enumerate(requests):
        progress(f"checkpoints: {request.prompt[:40]!r} under {len(entries)} models", i / len(requests))
        views.append(checkpoints_view(models, request, name, args.chat, args.lens))
    return views


def _labels(args: argparse.Namespace, pair: ModelPair | None) -> dict[str, str]:
    """The specs as typed (the demo pair's when none were) name the sides, unless --label names them."""
    typed = {}
    if pair is not None:
        typed = {"base": args.base or DEFAULT_BASE, "unlearned": args.unlearned or DEFAULT_UNLEARNED}
    return typed | parse_labels(args.label)


def run_report(args: argparse.Namespace) -> int:
    """Read results, load the pair (when probes or specs are given), compute, write the HTML (and images)."""
    from tqdm import tqdm

    _split_pair(args)
    probes = [parse_probe(text) for text in args.probe]
    for text in args.checkpoints:  # a view without an answer fails before any model loads
        if not parse_probe(text).answer:
            raise UserError(f"--checkpoints {text!r}: give the answer too, as 'prompt|answer'")
    notes = args.notes_file.read_text(encoding="utf-8") if args.notes_file else args.notes
    robustness = read_robustness(args.robustness) if args.robustness else None
    parse_labels(args.label)  # a malformed label fails before any model loads
    if args.pdf:
        require_chromium()  # and a PDF that cannot be printed
    with tqdm(total=100, unit="%", desc="reading results", file=sys.stderr) as bar:

        def progress(message: str, fraction: float) -> None:
            bar.set_description(message[:60])
            bar.update(10 + round(80 * fraction) - bar.n)

        results = ingest(args.results, oracle=args.oracle) if args.results else None
        views = _checkpoint_views(args, lambda message, fraction: bar.set_description(message[:60]))
        bar.set_description("loading the model pair")
        pair = _pair_from_cli(args, probes)
        bar.update(10 - bar.n)
        report = build_report(
            pair, results=results, x_metric=args.x_metric, y_metric=args.y_metric,
            sources=[str(path) for path in args.results], probes=probes, chat=args.chat,
            with_attribution=args.attribute, attribution_method=args.attribution_method, with_lens=args.lens,
            robustness=robustness, checkpoints=views, labels=_labels(args, pair), notes=notes, title=args.title,
            progress=progress,
        )  # fmt: skip
        bar.set_description("writing")
        report.write(args.out)
        if args.pdf:
            bar.set_description("printing the PDF")
            pdf = args.out.with_suffix(".pdf") if args.pdf is True else Path(args.pdf)
            log.info("wrote %s", write_pdf(report, pdf))
        if args.images:
            for path in export_all(report, args.images, args.image_format or ["png"]):
                log.info("wrote %s", path)
        bar.update(100 - bar.n)
    sys.stdout.write(f"{args.out}\n")
    return 0
