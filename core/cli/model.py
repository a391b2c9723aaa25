"""`python -m core model`: prepare the embedded SmolLM2 model and print its folder; with `--plan`, print how a pair
would be loaded (tensors shared, memory budget, offloaded layers) without loading any weights."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.cli.common import add_pair_arguments
from core.common.limits import format_bytes
from core.models.embedded import ensure_embedded_model


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `model` on the main CLI's subcommands."""
    parser = commands.add_parser("model", help="prepare the embedded SmolLM2 model and print its folder")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print how --base/--unlearned would be loaded (shared tensors, --max-memory placement) as JSON, "
        "reading only headers, configs and raw-byte hashes",
    )
    add_pair_arguments(parser)
    parser.set_defaults(handler=run_model)


def run_model(args: argparse.Namespace) -> int:
    """Fetch (once) and convert the embedded model, then print where it is; or print a pair's load plan."""
    if args.plan:
        sys.stdout.write(json.dumps(load_plan(args), indent=2) + "\n")
        return 0
    sys.stdout.write(f"{ensure_embedded_model()}\n")
    return 0


def load_plan(args: argparse.Namespace) -> dict[str, Any]:
    """What ModelPair.load would do with these pair arguments, without loading weights."""
    from core.common.errors import UserError
    from core.models import budget, loading, offload
    from core.models.spec import ModelSpec, resolve_spec

    if not (args.base and args.unlearned):
        raise UserError("--plan needs --base and --unlearned")
    options = {"dtype": args.dtype, "device": args.device, "trust_remote_code": args.trust_remote_code}
    specs = {name: resolve_spec(ModelSpec.parse(getattr(args, name), **options)) for name in ("base", "unlearned")}
    device = loading.resolve_device(specs["base"].device)
    dtype = loading.resolve_dtype(specs["base"].dtype, device)
    plan = budget.plan_load(specs, device, dtype, args.max_memory, not args.skip_memory_check, lambda _: None)
    placements = {name: plan.placements.get(spec.backbone_key()) for name, spec in specs.items()}
    return {
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "weights": format_bytes(plan.need) if plan.need is not None else None,
        "tensors": plan.sharing.summary() if plan.sharing else None,
        "max_memory": format_bytes(plan.budget) if plan.budget else None,
        "automatic_budget": plan.automatic,
        "offloaded": offload.describe_offload({n: offload.offloaded(p, device) for n, p in placements.items()}),
    }
