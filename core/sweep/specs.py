"""Sizing and identifying a task's models on the driver, without loading them or touching the driver's devices (a
head node without a GPU plans a GPU sweep): the device a task uses, the memory it asks Ray for, and a fingerprint
of its files that keys its stored result."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from core.evaluation.candidates import folder_fingerprint
from core.models.loading import LOAD_MARGIN, LOAD_OVERHEAD, estimate_weight_bytes, resolve_dtype
from core.models.spec import ModelSpec

UNKNOWN_SIZE_BYTES = 4 * 2**30  # what a task asks for when its model's size cannot be told from its files
TRAINING_STATE_FACTOR = 4  # full fine-tuning in float32: weights, gradients and AdamW's two moments


def run_device(spec: ModelSpec, gpus: float) -> str:
    """The device a task uses: `auto` is cuda for a task given GPUs and cpu otherwise (a task never uses a GPU Ray
    did not give it); an explicit device stays."""
    if spec.device != "auto":
        return spec.device
    return "cuda" if gpus > 0 else "cpu"


def load_dtype(spec: ModelSpec) -> torch.dtype:
    """The dtype the task loads the weights in (`auto`: bfloat16 on a GPU, float32 on a CPU, as the loader does on
    a GPU with bfloat16)."""
    if spec.dtype == "auto":
        return torch.bfloat16 if spec.device.startswith("cuda") else torch.float32
    return resolve_dtype(spec.dtype, torch.device("cpu"))


def weight_bytes(spec: ModelSpec, dtype: torch.dtype | None = None) -> int | None:
    """A resolved spec's weights once loaded (the backbone from its safetensors headers or config, plus the
    adapter's files); None when its size cannot be told."""
    weights = estimate_weight_bytes(spec, dtype or load_dtype(spec))
    if weights is None:
        return None
    adapter = sum(p.stat().st_size for p in Path(spec.adapter).glob("adapter_model.*")) if spec.adapter else 0
    return weights + adapter


def task_memory(specs: list[ModelSpec], copies: float = 1.0, dtype: torch.dtype | None = None) -> int:
    """Bytes of host memory a task holding `specs` (each backbone once) asks Ray for: the weights × `copies` with
    the loader's margin and overhead (core.models.loading's memory check uses the same), or UNKNOWN_SIZE_BYTES."""
    backbones = {spec.backbone_key(): spec for spec in specs}
    sizes = [weight_bytes(spec, dtype) for spec in backbones.values()]
    if any(size is None for size in sizes):
        return UNKNOWN_SIZE_BYTES
    return int(sum(sizes) * copies * LOAD_MARGIN + LOAD_OVERHEAD)


def spec_fingerprint(spec: ModelSpec) -> dict[str, Any]:
    """What identifies a spec's weights for a stored result: the spec and its local folders' file hashes."""
    folders = {"source": spec.source, "adapter": spec.adapter}
    files = {role: folder_fingerprint(Path(path)) for role, path in folders.items() if path and Path(path).is_dir()}
    return {"spec": dataclasses.asdict(spec), "files": files}
