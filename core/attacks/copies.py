"""Plain copies of one side of a pair, adapters merged into the copied weights: what weight attacks change.

A copy is refused before it is made when it would not fit the free memory (a failed copy on a CPU can end the
server); the pair itself is never modified.
"""

from __future__ import annotations

import copy

import torch

from core.common.limits import ensure_fits, module_bytes
from core.models.pair import ModelPair


def _unwrap_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Merge each PEFT layer's active adapters into its base layer (unless adapters are disabled) and put the base
    layer in its place: a plain model computing what the adapted one did."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if not isinstance(module, BaseTunerLayer):
            continue
        if not module.disable_adapters:
            active = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
            if active:
                module.merge(adapter_names=active)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):  # set on the backbone by PEFT; a plain copy has no adapters any more
        del model.peft_config
    return model


def merged_copy(
    pair: ModelPair, side: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """An independent plain copy of one side (adapters merged into the copied weights): the pair is untouched.
    Refused first when the copy would not fit the free memory (a failed copy on a CPU can end the server)."""
    with pair.use(side) as model:
        ensure_copy_fits(model, pair.device, device or pair.device, dtype or pair.dtype, f"copying the {side} model")
        clone = copy.deepcopy(model)
    clone = _unwrap_adapters(clone)
    clone.to(device=device or pair.device, dtype=dtype or pair.dtype)
    clone.eval()
    clone.requires_grad_(False)
    return clone


def ensure_copy_fits(
    model: torch.nn.Module,
    source: torch.device | str,
    target: torch.device | str,
    dtype: torch.dtype,
    what: str,
    extra: int = 0,
) -> None:
    """Refuse a copy of `model` (deep-copied where it is, then converted to `dtype` on `target`) that would not
    fit, with `extra` bytes more needed on `target` (e.g. training activations)."""
    copied, converted = module_bytes(model), module_bytes(model, dtype)
    if torch.device(source).type == torch.device(target).type:
        converts = any(p.is_floating_point() and p.dtype != dtype for p in model.parameters())
        # converting makes a second copy while the first is alive; `.to` the same dtype and device makes none
        ensure_fits(copied + (converted if converts else 0) + extra, target, what)
        return
    ensure_fits(copied, source, what)
    ensure_fits(converted + extra, target, what)
