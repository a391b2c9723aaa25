"""What holding a base and N unlearned models costs, before any weights are read: each backbone once (adapters on
one backbone share it), plus each distinct adapter's weights, against the memory free on the device; and the
refusal of a set that will not fit."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.common.errors import UserError
from core.common.limits import format_bytes
from core.models import loading
from core.models.spec import SKIP_MEMORY_CHECK_ENV, ModelSpec, check_safetensors

_FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass
class MemoryPlan:
    """The weights a set of models takes once loaded. `backbones`: (label, bytes, parameters) per distinct backbone;
    `adapters`: the same per distinct adapter; sizes are None where they cannot be told from the files."""

    device: str
    dtype: str
    backbones: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    adapters: list[tuple[str, int, int]] = field(default_factory=list)
    available: int | None = None

    @property
    def weight_bytes(self) -> int | None:
        sizes = [size for _, size, _ in self.backbones]
        if any(size is None for _, size, _ in self.backbones):
            return None
        return sum(sizes) + sum(size for _, size, _ in self.adapters)  # type: ignore[arg-type]

    @property
    def running_bytes(self) -> int:
        """What loading and the first passes need on top (core.models.loading's margin and overhead)."""
        weights = self.weight_bytes or 0
        return int(weights * (loading.LOAD_MARGIN - 1) + loading.LOAD_OVERHEAD)

    @property
    def parameters(self) -> int | None:
        counts = [count for _, _, count in self.backbones]
        if any(count is None for count in counts):
            return None
        return sum(counts) + sum(count for _, _, count in self.adapters)  # type: ignore[arg-type]

    @property
    def fits(self) -> bool | None:
        """None when either side of the comparison is unknown."""
        if self.weight_bytes is None or self.available is None:
            return None
        return self.weight_bytes + self.running_bytes <= self.available

    def text(self) -> str:
        """One paragraph: what the set holds, what that costs, what is free."""
        models = f"{len(self.backbones)} backbone(s) and {len(self.adapters)} adapter(s)"
        if self.weight_bytes is None:
            return f"{models}; the size of a backbone cannot be told from its files, so no memory check is made."
        params = f" ({self.parameters / 1e6:,.1f} M parameters)" if self.parameters is not None else ""
        free = f"; {format_bytes(self.available)} free on {self.device}" if self.available is not None else ""
        return (
            f"{models}: {format_bytes(self.weight_bytes)} of weights in {self.dtype}{params}, plus about "
            f"{format_bytes(self.running_bytes)} to run{free}."
        )

    def check(self) -> None:
        """Refuse (UserError) a set that will not fit, before any weights are loaded."""
        if self.fits is False:
            raise UserError(
                f"these models will not fit: {self.text()} Choose fewer models or checkpoints, bfloat16, or adapter "
                f"checkpoints on one base (loaded once); an operator who knows it fits sets {SKIP_MEMORY_CHECK_ENV}=1 "
                "(CLI: --skip-memory-check)."
            )


def memory_plan(specs: Sequence[ModelSpec], device: torch.device, dtype: torch.dtype) -> MemoryPlan:
    """The plan for resolved `specs` (the base first) loaded on `device` in `dtype`."""
    plan = MemoryPlan(str(device), str(dtype).replace("torch.", ""))
    for spec in {spec.backbone_key(): spec for spec in specs}.values():
        size = loading.estimate_weight_bytes(spec, dtype)
        count = None if size is None else size // dtype.itemsize
        plan.backbones.append((spec.source, size, count))
    for adapter in dict.fromkeys(spec.adapter for spec in specs if spec.adapter):
        plan.adapters.append((adapter, *adapter_size(Path(adapter).expanduser(), dtype)))
    plan.available = loading.available_memory(device, spread=bool(specs[0].device_map))
    return plan


def adapter_size(folder: Path, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes once loaded in `dtype`, parameters) of an adapter folder's safetensors weights, from the header; the
    file's size where it has only pickle weights (opted in)."""
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        size = sum(p.stat().st_size for p in folder.glob("adapter_model.*"))
        return size, size // 4
    total = count = 0
    for name, tensor in check_safetensors(path).items():
        if name == "__metadata__":
            continue
        n = functools.reduce(operator.mul, tensor["shape"], 1)
        count += n
        total += n * (dtype.itemsize if tensor["dtype"] in _FLOATING else 4)
    return total, count
