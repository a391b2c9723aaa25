"""PEFT adapters on a shared backbone: loading each side's adapter into one PeftModel, running a LoRA adapter
folded into its weights, and running two adapters (or one and none) side by side in one batch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from core.common.errors import UserError


def attach_adapters(model: torch.nn.Module, adapters: dict[str, str | None]) -> torch.nn.Module:
    """Load each side's adapter into one PeftModel under the side's name (the backbone stays shared)."""
    from peft import PeftModel

    peft_model = None
    for name, path in adapters.items():
        if not path:
            continue
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
            else:
                peft_model.load_adapter(path, adapter_name=name, is_trainable=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"could not load adapter {path}: {str(exc).splitlines()[0]}") from exc
    peft_model.eval()
    peft_model.requires_grad_(False)
    return peft_model


@contextlib.contextmanager
def merged_adapter(peft_model: Any) -> Iterator[bool]:
    """Run the active LoRA adapter folded into its base weights (W + ΔW), adapters off: one matmul per linear layer
    instead of three, ≈ 20 % less forward time on a CPU for the demo's r=16 all-linear adapters. The original
    weight tensors are put back afterwards (no in-place merge / unmerge, so no rounding drift accumulates), and
    the merged copies (one more copy of the adapted layers) are freed. Yields False and changes nothing where the
    adapter is not plain LoRA on linear layers (DoRA, LoRA biases, embedding / conv layers)."""
    from peft.tuners.lora import LoraLayer

    active = getattr(peft_model, "active_adapter", None)
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and active in getattr(m, "lora_A", {})]
    plain = bool(layers) and all(
        isinstance(m.get_base_layer(), torch.nn.Linear)
        and not m.use_dora.get(active, False)
        and not getattr(m, "lora_bias", {}).get(active, False)
        for m in layers
    )
    if not isinstance(active, str) or not plain:
        yield False
        return
    originals = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                weight = base.weight
                delta = layer.get_delta_weight(active).to(weight.dtype)
                originals.append((base, weight))
                base.weight = torch.nn.Parameter(weight + delta, requires_grad=False)
        with peft_model.disable_adapter():
            yield True
    finally:
        for base, weight in originals:
            base.weight = weight


def mixed_batch_supported(peft_model: Any, names: Sequence[str]) -> bool:
    """Whether PEFT's mixed batch (`model(..., adapter_names=[...])`) accepts adapters `names` ("__base__": none):
    PEFT refuses it for a DoRA adapter and for merged adapters ("Cannot pass `adapter_names` when DoRA is
    enabled"), and in training mode. Where it does not, run one pass per adapter instead."""
    from peft.tuners.lora import LoraLayer

    if peft_model.training:
        return False
    wanted = {name for name in names if name != "__base__"}
    for layer in peft_model.modules():
        if isinstance(layer, LoraLayer) and (layer.merged or any(layer.use_dora.get(name, False) for name in wanted)):
            return False
    return True


@contextlib.contextmanager
def two_sided_lora(peft_model: Any, names: Sequence[str]) -> Iterator[bool]:
    """Run a batch whose first half takes adapter `names[0]` and second half `names[1]` ("__base__": no adapter)
    with each LoRA layer computing both halves' low-rank terms in two batched matmuls (`bmm` over the halves with
    the two adapters' A and B stacked), instead of PEFT's mixed-batch routing (per layer: split the batch by
    adapter name, index, run A, B, scale, scatter back; plus forward hooks on every module to carry the names).
    The shared base matmul still sees the whole batch. Same arithmetic per row as PEFT (x·Aᵀ·Bᵀ·s added to the
    base output); on SmolLM2 with the demo's r=16 all-linear adapters it about halves what the mixed pass costs
    over the bare backbone (docs/PERFORMANCE.md).

    While inside, call the model *without* `adapter_names`; the batch must have an even number of rows. Yields
    False and changes nothing where a layer is not plain LoRA on a linear layer (DoRA and other variants, LoRA
    bias, embedding / conv LoRA), an adapter is merged, or the model is in training mode (dropout): the caller
    then uses PEFT's mixed batch."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    used = [[name for name in names if name in m.lora_A] for m in layers]

    def plain(layer: Any, adapters: list[str]) -> bool:
        usable = isinstance(layer.get_base_layer(), torch.nn.Linear) and not layer.merged and not layer.training
        return usable and all(
            name not in getattr(layer, "lora_variant", {})
            and not getattr(layer, "lora_bias", {}).get(name, False)
            and not getattr(layer, "fan_in_fan_out", False)
            for name in adapters
        )

    if len(names) != 2 or not layers or not all(plain(m, a) for m, a in zip(layers, used, strict=True)):
        yield False
        return
    patched = []
    try:
        for layer, adapters in zip(layers, used, strict=True):
            if adapters:
                layer.forward = _two_sided_forward(layer, names)
                patched.append(layer)
            else:  # neither side adapts this layer
                layer.forward = layer.get_base_layer().forward
                patched.append(layer)
        yield True
    finally:
        for layer in patched:
            del layer.forward  # back to the class's forward


def _two_sided_forward(layer: Any, names: Sequence[str]) -> Callable[..., torch.Tensor]:
    """The forward of one LoRA layer for a batch split in two halves (see `two_sided_lora`)."""
    base = layer.get_base_layer()
    sides = [i for i, name in enumerate(names) if name in layer.lora_A]
    dtype = layer.lora_A[names[sides[0]]].weight.dtype
    ranks = [layer.lora_A[names[i]].weight.shape[0] for i in sides]
    rank = max(ranks)
    # A as [2, in, r] and B·scaling as [2, r, out]; a side without this adapter (or with a lower rank) is zero-padded
    a = torch.zeros(2, base.in_features, rank, dtype=dtype, device=base.weight.device)
    b = torch.zeros(2, rank, base.out_features, dtype=dtype, device=base.weight.device)
    with torch.no_grad():
        for i, r in zip(sides, ranks, strict=True):
            name = names[i]
            a[i, :, :r] = layer.lora_A[name].weight.t()
            b[i, :r, :] = layer.lora_B[name].weight.t() * layer.scaling[name]
    single = sides[0] if len(sides) == 1 else None

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = base(x, *args, **kwargs)
        halves = x.to(dtype).reshape(2, -1, x.shape[-1])
        out = result.view(2, -1, result.shape[-1])
        if single is not None:  # one side has no adapter here: only the other half gets a low-rank term
            term = (halves[single] @ a[single]) @ b[single]
            out[single] += term.to(result.dtype)
        else:
            out += torch.bmm(torch.bmm(halves, a), b).to(result.dtype)
        return result

    return forward


@contextlib.contextmanager
def n_sided_lora(peft_model: Any, names: Sequence[str]) -> Iterator[bool]:
    """`two_sided_lora` for any number of sides: a batch of len(names) equal blocks, block i taking adapter
    `names[i]` ("__base__": no adapter), each LoRA layer computing every block's low-rank term in two batched
    matmuls (`bmm` over the blocks that carry an adapter at that layer, their A and B·scaling stacked and
    zero-padded to the largest rank), while the shared base matmul sees the whole batch once. So N adapter
    checkpoints on one backbone (an unlearning run's trajectory) cost one pass of N blocks, not N passes.

    While inside, call the model *without* `adapter_names`; the batch must hold len(names) blocks of equal size.
    Yields False and changes nothing (the caller then uses PEFT's mixed batch) under the same conditions as
    `two_sided_lora`: a layer that is not plain LoRA on a linear layer, a merged adapter, training mode, or no
    names."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    used = [[name for name in names if name in m.lora_A] for m in layers]
    plain = all(_plain_lora(layer, adapters) for layer, adapters in zip(layers, used, strict=True))
    if not names or not layers or not plain:
        yield False
        return
    try:
        for layer, adapters in zip(layers, used, strict=True):
            # a layer no side adapts runs its base layer alone
            layer.forward = _n_sided_forward(layer, names) if adapters else layer.get_base_layer().forward
        yield True
    finally:
        for layer in layers:
            if "forward" in vars(layer):
                del layer.forward  # back to the class's forward


def _plain_lora(layer: Any, adapters: list[str]) -> bool:
    """Whether `layer` is plain LoRA on an unmerged linear layer in eval mode for every adapter in `adapters`."""
    usable = isinstance(layer.get_base_layer(), torch.nn.Linear) and not layer.merged and not layer.training
    return usable and all(
        name not in getattr(layer, "lora_variant", {})
        and not getattr(layer, "lora_bias", {}).get(name, False)
        and not getattr(layer, "fan_in_fan_out", False)
        for name in adapters
    )


def _n_sided_forward(layer: Any, names: Sequence[str]) -> Callable[..., torch.Tensor]:
    """The forward of one LoRA layer for a batch of len(names) blocks (see `n_sided_lora`)."""
    base = layer.get_base_layer()
    sides = [i for i, name in enumerate(names) if name in layer.lora_A]
    dtype = layer.lora_A[names[sides[0]]].weight.dtype
    ranks = [layer.lora_A[names[i]].weight.shape[0] for i in sides]
    rank = max(ranks)
    device = base.weight.device
    # A as [S, in, r] and B·scaling as [S, r, out] for the S blocks that carry an adapter here; lower ranks padded
    a = torch.zeros(len(sides), base.in_features, rank, dtype=dtype, device=device)
    b = torch.zeros(len(sides), rank, base.out_features, dtype=dtype, device=device)
    with torch.no_grad():
        for j, (i, r) in enumerate(zip(sides, ranks, strict=True)):
            a[j, :, :r] = layer.lora_A[names[i]].weight.t()
            b[j, :r, :] = layer.lora_B[names[i]].weight.t() * layer.scaling[names[i]]
    every = len(sides) == len(names)
    index = torch.tensor(sides, device=device)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = base(x, *args, **kwargs)
        blocks = x.to(dtype).reshape(len(names), -1, x.shape[-1])
        out = result.view(len(names), -1, result.shape[-1])
        if every:
            out += torch.bmm(torch.bmm(blocks, a), b).to(result.dtype)
        else:  # only the blocks whose adapter has this layer get a low-rank term
            out.index_add_(0, index, torch.bmm(torch.bmm(blocks.index_select(0, index), a), b).to(result.dtype))
        return result

    return forward
