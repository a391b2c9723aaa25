"""A memory budget for a pair: what does not fit stays offloaded with accelerate (CPU RAM behind a GPU, then disk).

`--max-memory SIZE` (CLI), the dashboard's budget field (dashboard/state/memory.py) and `ModelPair.load(max_memory=)`
set the bytes the pair's weights may take on the compute device (RAM on a CPU). Where no budget is given and the
pair would not fit, `automatic_budget` picks one from the free memory. Each side then gets a share of the budget in
proportion to its size; accelerate's `infer_auto_device_map` places whole decoder layers (never split) in order,
the first ones on the device, the rest in CPU RAM (behind a GPU) and then on disk, and transformers' loader
dispatches them: a safetensors checkpoint's own files serve as the disk offload (nothing is copied; other weights
go to the offload folder in the cache home). Offloaded layers are fetched for each forward pass, so the arithmetic
is the same as in memory and only slower; `ModelPair.describe()` says which layers are offloaded and what one
probe-sized forward pass measured.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from typing import Any

import psutil
import torch

from core.common.cache import cache_home
from core.common.errors import UserError
from core.common.limits import MEMORY_HEADROOM, format_bytes
from core.models.spec import ModelSpec

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
MIN_BUDGET = 16 * 2**20  # below this no layer fits: refuse rather than put everything on disk
PROBE_TOKENS = 32  # the forward pass timed once after an offloaded load: a short probe's length


def parse_size(text: str | int | None) -> int | None:
    """'12GB', '12 GiB', '500m', '1.5g' or a byte count → bytes (binary units: 1 GB = 2**30); None / '' → None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise UserError(f"memory budget {text!r} is not a size such as 12GB, 500MB or 1.5GiB")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < MIN_BUDGET:
        raise UserError(f"memory budget {format_bytes(value)} is below the {format_bytes(MIN_BUDGET)} a layer needs")
    return value


def automatic_budget(free: int, margin: float, overhead: int) -> int | None:
    """The budget chosen when the pair will not fit and none was given: what MEMORY_HEADROOM of the `free` bytes
    holds once the loader's `margin` and `overhead` are set aside; None where that is less than MIN_BUDGET (the
    pair is then refused, as before budgets existed)."""
    budget = int((MEMORY_HEADROOM * free - overhead) / margin)
    return budget if budget >= MIN_BUDGET else None


def offload_folder(spec: ModelSpec) -> str:
    """A folder in the cache home for weights that must go to disk and are not in a safetensors file already."""
    key = hashlib.sha256(repr(spec.backbone_key()).encode()).hexdigest()[:16]
    folder = cache_home() / "offload" / key
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def device_map(spec: ModelSpec, budget: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """accelerate's placement of the spec's model under `budget` bytes on `device` (RAM behind a GPU, then disk),
    whole decoder layers at a time, built on the meta device from the config (no weights are read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.source, revision=spec.revision)
    if device.type == "cuda":
        ram = int(MEMORY_HEADROOM * psutil.virtual_memory().available)
        return config_device_map(config, {device.index or 0: budget, "cpu": ram}, dtype)
    return config_device_map(config, {"cpu": budget}, dtype)


def config_device_map(config: Any, limits: dict[Any, int], dtype: torch.dtype) -> dict[str, Any]:
    """accelerate's placement of the model a config describes under per-device `limits` (bytes; a GPU by its
    index, "cpu"), the rest on disk; built on the meta device (bench/scale.py plans 7B/8B pairs with it)."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    placement = infer_auto_device_map(
        empty, max_memory=dict(limits), no_split_module_classes=empty._no_split_modules or [], dtype=dtype
    )
    home = next(iter(limits))
    names = {module: name for name, module in empty.named_modules()}
    placement = pin(dict(placement), names[empty.get_input_embeddings()], home, set(names.values()))
    head = empty.get_output_embeddings()
    tied = getattr(config.get_text_config(), "tie_word_embeddings", False)
    if head is not None and (tied or head.weight is empty.get_input_embeddings().weight):  # one tensor, one place
        placement = pin(placement, names[head], home, set(names.values()))
    return placement


def pin(placement: dict[str, Any], name: str, home: Any, modules: set[str]) -> dict[str, Any]:
    """`placement` with module `name` on `home`: the input embeddings stay on the compute device, where callers
    find the device from the first parameter (an entry covering it is split into its children first)."""
    while name not in placement:
        covering = next((key for key in placement if key == "" or name.startswith(f"{key}.")), None)
        if covering is None:
            return placement
        where = placement.pop(covering)
        prefix = f"{covering}." if covering else ""
        for child in sorted(m for m in modules if m.startswith(prefix) and m and "." not in m[len(prefix) :]):
            placement[child] = where
    placement[name] = home
    return placement


def offloaded(placement: dict[str, Any] | None, device: torch.device) -> dict[str, str]:
    """The modules a placement keeps off the compute device: {module: 'cpu' | 'disk'}."""
    if not placement:
        return {}
    home = str((device.index or 0) if device.type == "cuda" else "cpu")
    return {name: str(where) for name, where in placement.items() if str(where) != home}


def shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split `budget` over backbones in proportion to their sizes (every one fits whole when the total does)."""
    total = sum(sizes.values())
    return {key: max(MIN_BUDGET, budget * size // max(total, 1)) for key, size in sizes.items()}


def describe_offload(placements: dict[str, dict[str, str]]) -> str | None:
    """'base: layers 12–31 and lm_head on disk; unlearned: …' or None when nothing is offloaded."""
    parts = []
    for side, moved in placements.items():
        if not moved:
            continue
        by_place: dict[str, list[str]] = {}
        for module, where in moved.items():
            by_place.setdefault(where, []).append(module)
        parts.append(f"{side}: " + "; ".join(f"{_modules(names)} on {where}" for where, names in by_place.items()))
    return "; ".join(parts) or None


def _modules(names: Iterable[str]) -> str:
    """'layers 12–31, lm_head' from module names (consecutive decoder layers as a range)."""
    layers, others = [], []
    for name in names:
        match = re.search(r"(?:layers|h|blocks)\.(\d+)$", name)
        if re.search(r"(?:^|\.)(?:layers|h|blocks)$", name):
            others.insert(0, "all layers")
        else:
            (layers.append(int(match.group(1))) if match else others.append(name))
    text = []
    if layers:
        layers.sort()
        runs, start = [], layers[0]
        for previous, current in zip(layers, [*layers[1:], None], strict=True):
            if current != previous + 1:
                runs.append(f"{start}" if start == previous else f"{start}–{previous}")
                start = current
        text.append("layers " + ", ".join(runs))
    return ", ".join(text + [name or "the whole model" for name in others])


def time_probe(model: torch.nn.Module, device: torch.device, vocab: int) -> float:
    """Seconds one forward pass over PROBE_TOKENS tokens takes (what each probe pays at least once per side)."""
    ids = torch.arange(PROBE_TOKENS, device=device).remainder(max(vocab, 1)).unsqueeze(0)
    began = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - began


def budget_note(budget: int, need: int) -> str:
    return f"a budget of {format_bytes(budget)} for weights of {format_bytes(need)}"


def materialize(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """An offloaded parameter's value (accelerate keeps it on the meta device between passes): read from the
    module's offload map; `tensor` itself where it is in memory."""
    if tensor.device.type != "meta":
        return tensor
    module_name, _, key = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    hook = getattr(module, "_hf_hook", None)
    weights = getattr(hook, "weights_map", None)
    if weights is None:
        raise UserError(f"{name} is offloaded and its weights cannot be read back")
    return weights[key].to("cpu")
