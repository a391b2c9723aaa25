"""Tensors two full checkpoints hold identically, loaded once.

RMU in its original form changes three MLP matrices and many recipes freeze layers, so an unlearned checkpoint often
repeats most of its base byte for byte. `plan_sharing` finds those tensors cheaply: first the safetensors headers
(same name, dtype and shape), then a BLAKE2b hash of each candidate's raw bytes, read from the files in chunks (no
tensor is built; a file's hashes are kept for the next pair that names it). `load_sharing` then builds the unlearned
model with its identical tensors *being* the base model's parameters and reads only the others from its files: a
pair costs one model plus the changed tensors.

Shared parameters are frozen like every pair parameter, and listed in `SHARED` (weak references): `core.unlearn.trainee`
gives a trainee its own copy of any shared parameter before training, so training a side never writes into the
other side (see docs/ARCHITECTURE.md, "Models").
"""

from __future__ import annotations

import functools
import hashlib
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.common.errors import UserError
from core.models.spec import ModelSpec, check_safetensors, safetensors_files

log = logging.getLogger(__name__)

HASH_CHUNK = 16 * 2**20  # bytes read at a time while hashing a tensor
# parameters one side of a loaded pair shares with the other, by id (a WeakSet would compare tensors elementwise)
SHARED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def is_shared(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a parameter two sides of a loaded pair hold as one (see SHARED)."""
    return SHARED.get(id(tensor)) is tensor


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's raw bytes lie in a safetensors file."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def numel(self) -> int:
        return functools.reduce(lambda a, b: a * b, self.shape, 1)


@dataclass(frozen=True)
class SharingPlan:
    """Which of the unlearned checkpoint's tensors equal the base's (`identical`) and which differ."""

    identical: frozenset[str]
    differing: tuple[str, ...]
    identical_params: int  # elements in identical tensors
    total_params: int  # elements in all of the unlearned checkpoint's tensors

    @property
    def n_tensors(self) -> int:
        return len(self.identical) + len(self.differing)

    def summary(self) -> str:
        """'k of n tensors differ (x % of parameters)'."""
        share = 100.0 * (self.total_params - self.identical_params) / max(self.total_params, 1)
        return f"{len(self.differing)} of {self.n_tensors} tensors differ ({share:.3g} % of parameters)"


def stored_tensors(folder: Path) -> dict[str, StoredTensor]:
    """Every tensor of a folder's safetensors files (shard index or model.safetensors), from the headers alone."""
    found: dict[str, StoredTensor] = {}
    for file in safetensors_files(folder):
        header = check_safetensors(file)
        with file.open("rb") as handle:
            data_start = 8 + int.from_bytes(handle.read(8), "little")
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            shape = tuple(entry["shape"])
            found[name] = StoredTensor(file, entry["dtype"], shape, data_start + begin, data_start + end)
    return found


@functools.lru_cache(maxsize=65536)
def _digest(file: Path, start: int, end: int, size: int, mtime_ns: int) -> bytes:
    """BLAKE2b of bytes [start, end) of `file` (size and mtime key the cache: a rewritten file is hashed again)."""
    digest = hashlib.blake2b(digest_size=32)
    with file.open("rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            chunk = handle.read(min(HASH_CHUNK, left))
            if not chunk:
                raise UserError(f"{file} is cut short inside a tensor")
            digest.update(chunk)
            left -= len(chunk)
    return digest.digest()


def tensor_digest(tensor: StoredTensor) -> bytes:
    stat = tensor.file.stat()
    return _digest(tensor.file, tensor.start, tensor.end, stat.st_size, stat.st_mtime_ns)


def plan_sharing(base: Path, unlearned: Path) -> SharingPlan:
    """Compare two checkpoints tensor by tensor: headers first, then raw-byte hashes of the candidates."""
    ours, theirs = stored_tensors(base), stored_tensors(unlearned)
    identical, differing, same_params, total = set(), [], 0, 0
    for name, tensor in theirs.items():
        total += tensor.numel
        other = ours.get(name)
        same = (
            other is not None
            and (other.dtype, other.shape) == (tensor.dtype, tensor.shape)
            and other.end - other.start == tensor.end - tensor.start
            and tensor_digest(other) == tensor_digest(tensor)
        )
        if same:
            identical.add(name)
            same_params += tensor.numel
        else:
            differing.append(name)
    return SharingPlan(frozenset(identical), tuple(differing), same_params, total)


def can_share(base: ModelSpec, unlearned: ModelSpec) -> bool:
    """Two plain local safetensors folders loaded alike (no adapter, GGUF, device map or remote code)."""
    specs = (base, unlearned)
    plain = all(
        not s.adapter and not s.gguf_file and not s.device_map and not s.trust_remote_code and not s.revision
        for s in specs
    )
    alike = (base.dtype, base.device) == (unlearned.dtype, unlearned.device)
    return (
        plain
        and alike
        and base.source != unlearned.source
        and all(Path(s.source).is_dir() and safetensors_files(Path(s.source)) for s in specs)
    )


def load_sharing(
    spec: ModelSpec, base_model: torch.nn.Module, plan: SharingPlan, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module | None:
    """The unlearned model with the plan's identical tensors taken from `base_model` (the same Parameter objects)
    and only the others read from its files. None where the checkpoint's names do not map onto the model's
    parameters one to one (a legacy layout the loader renames): the caller then loads it normally."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(spec.source)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    base_params = dict(base_model.named_parameters(remove_duplicate=False))
    stored = stored_tensors(Path(spec.source))
    handles: dict[Path, Any] = {}
    for module_name, module in model.named_modules():
        for key, param in list(module._parameters.items()):
            name = f"{module_name}.{key}" if module_name else key
            if param is None or name not in stored:
                continue
            if name in plan.identical and name in base_params and base_params[name].shape == param.shape:
                module._parameters[key] = base_params[name]
                SHARED[id(base_params[name])] = base_params[name]
                continue
            file = stored[name].file
            handle = handles.setdefault(file, safe_open(str(file), framework="pt"))
            value = handle.get_tensor(name).to(device=device, dtype=dtype if param.is_floating_point() else None)
            module._parameters[key] = torch.nn.Parameter(value, requires_grad=False)
    model.tie_weights()
    if any(p.device.type == "meta" for p in model.parameters()):
        log.info("%s: checkpoint names do not cover the model's parameters; loading it without sharing", spec.label())
        return None
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def tensor_difference(base: torch.nn.Module, unlearned: torch.nn.Module) -> dict[str, Any]:
    """k of n parameters differ, by comparing two loaded models (shared storage counts as identical at no cost)."""
    theirs = dict(unlearned.named_parameters())
    ours = dict(base.named_parameters())
    differing, changed, total = 0, 0, 0
    with torch.no_grad():
        for name, tensor in theirs.items():
            total += tensor.numel()
            other = ours.get(name)
            same = other is not None and (
                other.data_ptr() == tensor.data_ptr()
                or (other.shape == tensor.shape and other.device.type != "meta" and torch.equal(other, tensor))
            )
            if not same:
                differing += 1
                changed += tensor.numel()
    share = 100.0 * changed / max(total, 1)
    return {
        "differing_tensors": differing,
        "tensors": len(theirs),
        "differing_percent": share,
        "summary": f"{differing} of {len(theirs)} tensors differ ({share:.3g} % of parameters)",
    }
