"""How a pair's backbones are loaded: whole, sharing the tensors two checkpoints hold identically, or offloaded
under a memory budget; and the memory check that refuses what cannot be loaded at all.

`plan_load` decides before any weight is read (headers and raw-byte hashes only); `load_backbones` then loads each
backbone once, in order (never two cold loads at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.common.errors import UserError
from core.common.limits import format_bytes
from core.models import loading, offload, sharing
from core.models.spec import SKIP_MEMORY_CHECK_ENV, ModelSpec

log = logging.getLogger(__name__)
Key = tuple[Any, ...]


@dataclass
class LoadPlan:
    """What `load_backbones` does: the backbones by key, a sharing plan (unlearned reads only what differs from
    base), the budget and each backbone's placement (offloaded modules) where the budget is smaller than the pair."""

    backbones: dict[Key, ModelSpec]
    need: int | None  # bytes of the pair's weights in memory without a budget (shared tensors once)
    sharing: sharing.SharingPlan | None = None
    budget: int | None = None
    automatic: bool = False  # the budget was chosen because the pair would not fit
    placements: dict[Key, dict[str, Any]] = field(default_factory=dict)


def plan_load(
    specs: dict[str, ModelSpec],
    device: torch.device,
    dtype: torch.dtype,
    max_memory: int | None,
    memory_check: bool,
    say: Callable[[str], None],
) -> LoadPlan:
    """Decide how to load a resolved pair: share identical tensors where both sides are plain safetensors folders;
    offload under `max_memory`, or under an automatic budget when the pair will not fit and may be offloaded."""
    backbones = {spec.backbone_key(): spec for spec in specs.values()}
    plan = LoadPlan(backbones, loading.estimate_pair_bytes(specs, dtype))
    if len(backbones) == 2 and sharing.can_share(specs["base"], specs["unlearned"]):
        say("comparing the two checkpoints' tensors (headers, then hashes of the raw bytes)")
        plan.sharing = sharing.plan_sharing(Path(specs["base"].source), Path(specs["unlearned"].source))
        if plan.need is not None:
            plan.need -= plan.sharing.identical_params * dtype.itemsize
        log.info("%s", plan.sharing.summary())
    offloadable = all(not s.adapter and not s.gguf_file and not s.device_map for s in backbones.values())
    too_big = plan.need is not None and not loading.fits(plan.need, device, spread=False)
    if max_memory is None and memory_check and offloadable and too_big:
        free = loading.available_memory(device)
        max_memory = offload.automatic_budget(free, loading.LOAD_MARGIN, loading.LOAD_OVERHEAD)
        plan.automatic = max_memory is not None
        if max_memory is not None:
            say(f"the pair does not fit: offloading with an automatic budget of {format_bytes(max_memory)}")
    if max_memory is not None and not offloadable:
        raise UserError("a memory budget offloads plain checkpoints only (no adapter, GGUF file or device map)")
    plan.budget = max_memory
    if max_memory is not None and (plan.need is None or plan.need > max_memory):
        plan.sharing = None  # offloaded sides are loaded each on its own
        sizes = {key: loading.estimate_weight_bytes(spec, dtype) or max_memory for key, spec in backbones.items()}
        for key, budget in offload.shares(sizes, max_memory).items():
            plan.placements[key] = offload.device_map(backbones[key], budget, device, dtype)
    if memory_check:
        _check(plan, specs, device, dtype)
    return plan


def _check(plan: LoadPlan, specs: dict[str, ModelSpec], device: torch.device, dtype: torch.dtype) -> None:
    """The memory check: the whole pair (no budget), or what the budget keeps in memory."""
    if plan.budget is None:
        loading.check_memory(specs, device, dtype, need=plan.need)
        return
    resident = min(plan.budget, plan.need) if plan.need is not None else plan.budget
    if not loading.fits(resident, device, spread=False):
        raise UserError(
            f"a memory budget of {format_bytes(plan.budget)} is more than is free now on {device}; choose a smaller "
            f"one (an operator who knows it fits sets {SKIP_MEMORY_CHECK_ENV}=1)"
        )


def load_backbones(
    plan: LoadPlan, specs: dict[str, ModelSpec], device: torch.device, dtype: torch.dtype, say: Callable[[str], None]
) -> dict[Key, torch.nn.Module]:
    """Each backbone once, in side order: the base, then the unlearned side reading only what differs (sharing),
    or each under its placement (offloaded)."""
    models: dict[Key, torch.nn.Module] = {}
    for name in ("base", "unlearned"):
        spec = specs[name]
        key = spec.backbone_key()
        if key in models:
            continue
        placement = plan.placements.get(key)
        if plan.sharing is not None and name == "unlearned":
            say(f"loading the changed tensors of {spec.label()} ({plan.sharing.summary()})")
            shared = sharing.load_sharing(spec, models[specs["base"].backbone_key()], plan.sharing, device, dtype)
            if shared is not None:
                models[key] = shared
                continue
            plan.sharing = None
        where = f" ({len(offload.offloaded(placement, device))} modules offloaded)" if placement else ""
        say(f"loading {name} model {spec.label()}{where}")
        folder = offload.offload_folder(spec) if placement else None
        models[key] = loading.load_backbone(spec, device, dtype, placement, folder)
    return models
