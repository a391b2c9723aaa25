"""Loading what a resolved ModelSpec names: the device and dtype, the tokenizer and the backbone's weights, and the
memory check that refuses a pair too large for the machine before any weights are read."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import psutil
import torch

from core.common.errors import UserError
from core.common.limits import available_bytes, format_bytes
from core.models.spec import SKIP_MEMORY_CHECK_ENV, ModelSpec, check_safetensors, safetensors_files

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
LOAD_MARGIN = 1.2  # weights × this, for the loader's temporary copies and the first passes' activations
LOAD_OVERHEAD = 256 * 2**20  # plus this much for the tokenizer, the app and the allocator's slack
_SAFETENSORS_FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}  # cast to the load dtype
_SAFETENSORS_OTHER = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def resolve_device(device: str) -> torch.device:
    """`auto` picks cuda > mps > cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but no CUDA GPU is available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU that supports it, fp32 otherwise (CPU bf16 matmuls lose too much for Δ)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _hub_error(spec: ModelSpec, exc: Exception) -> UserError:
    text = str(exc)
    if "safetensors" in text.lower() and not spec.allow_unsafe_weights:
        return UserError(
            f"{spec.source} has no safetensors weights. Loading pickle (.bin) weights can run code; whoever starts "
            "the server opts in with ULENS_ALLOW_PICKLE=1 (CLI: --allow-unsafe-weights), only for a source they trust."
        )
    if Path(spec.source).exists():
        return UserError(f"could not load the model in {spec.source}: {text.splitlines()[0] if text else exc}")
    return UserError(
        f"could not load {spec.source!r}: it is not a local folder, and as a hub id it could not be fetched "
        f"(offline, private or misspelt?). Download it where a hub is reachable and pass the folder. ({text[:300]})"
    )


def load_tokenizer(spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            spec.source, revision=spec.revision, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _hub_error(spec, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype,
    placement: dict[str, Any] | None = None,
    offload_folder: str | None = None,
) -> torch.nn.Module:
    """Load the weights named by a resolved spec (without its adapter), frozen and in eval mode; with `placement`
    (core.models.offload.device_map), dispatched by accelerate with the offloaded modules fetched per pass."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"revision": spec.revision, "dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    else:
        kwargs["use_safetensors"] = None if spec.allow_unsafe_weights else True
    if spec.device_map:
        kwargs["device_map"] = spec.device_map
    if placement:
        kwargs |= {"device_map": placement, "offload_folder": offload_folder}
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error(spec, exc) from exc
    if spec.gguf_file:
        model.hf_quantizer = None  # dequantised to dense weights already
    if not spec.device_map and not placement:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _safetensors_bytes(folder: Path, dtype: torch.dtype) -> int | None:
    """Bytes of a folder's safetensors weights once loaded in `dtype`, from the files' headers alone (no weights
    are read): floating tensors are cast to `dtype`, others keep their size. None without safetensors files."""
    files = safetensors_files(folder)
    if not files:
        return None
    total = 0
    for path in files:
        for name, tensor in check_safetensors(path).items():
            if name == "__metadata__":
                continue
            count = functools.reduce(lambda a, b: a * b, tensor["shape"], 1)
            code = tensor["dtype"]
            total += count * (dtype.itemsize if code in _SAFETENSORS_FLOATING else _SAFETENSORS_OTHER.get(code, 4))
    return total


def _config_bytes(spec: ModelSpec, dtype: torch.dtype) -> int:
    """Parameter count × dtype size of the model the spec's config describes, built on the meta device (no
    memory); for GGUF files (quantised on disk, dense once loaded), pickle-only folders and hub ids."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        spec.source, revision=spec.revision, gguf_file=spec.gguf_file, trust_remote_code=spec.trust_remote_code
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def estimate_weight_bytes(spec: ModelSpec, dtype: torch.dtype) -> int | None:
    """Bytes a resolved spec's backbone takes once loaded in `dtype`; None when it cannot be told."""
    folder = Path(spec.source)
    try:
        if folder.is_dir() and not spec.gguf_file:
            found = _safetensors_bytes(folder, dtype)
            if found is not None:
                return found
        return _config_bytes(spec, dtype)
    except Exception:  # an estimate only: a folder the loader cannot read either is reported by the loader
        log.warning("could not estimate the size of %s; loading it without a memory check", spec.label())
        return None


def estimate_pair_bytes(specs: dict[str, ModelSpec], dtype: torch.dtype) -> int | None:
    """Bytes a pair's weights take once loaded: each backbone once (two sides on one backbone share it), plus
    each adapter's weight file. None when a backbone's size cannot be told."""
    total = 0
    for spec in {spec.backbone_key(): spec for spec in specs.values()}.values():
        size = estimate_weight_bytes(spec, dtype)
        if size is None:
            return None
        total += size
    for adapter in {spec.adapter for spec in specs.values() if spec.adapter}:
        total += sum(path.stat().st_size for path in Path(adapter).expanduser().glob("adapter_model.*"))
    return total


def available_memory(device: torch.device, spread: bool = False) -> int:
    """Bytes free for weights on `device` (core.common.limits.available_bytes: RAM on a CPU, free GPU memory on
    CUDA); all
    GPUs plus RAM when a device map `spread`s the model over them; RAM where the device cannot tell (MPS, whose
    memory is the system's)."""
    ram = psutil.virtual_memory().available
    if device.type == "cuda" and spread:
        return ram + sum(available_bytes(torch.device("cuda", i)) or 0 for i in range(torch.cuda.device_count()))
    free = available_bytes(device)
    return ram if free is None else free


def fits(need: int, device: torch.device, spread: bool = False) -> bool:
    """Whether `need` bytes of weights, with the running margin check_memory adds, fit what is free."""
    return need * LOAD_MARGIN + LOAD_OVERHEAD <= available_memory(device, spread)


def check_memory(
    specs: dict[str, ModelSpec], device: torch.device, dtype: torch.dtype, need: int | None = None
) -> None:
    """Refuse a pair whose weights will not fit, before loading any: on a CPU the allocator raises RuntimeError
    (not MemoryError) or the kernel's OOM killer ends the whole server, so running out must not be tried. `need`:
    the pair's bytes where the caller knows better (tensors the two sides share counted once)."""
    need = estimate_pair_bytes(specs, dtype) if need is None else need
    if need is None:
        return
    free = available_memory(device, spread=bool(specs["base"].device_map))
    running = need * (LOAD_MARGIN - 1) + LOAD_OVERHEAD
    if need + running > free:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise UserError(
            f"the pair needs about {format_bytes(need)} for its weights in {str(dtype).replace('torch.', '')} (plus "
            f"{format_bytes(running)} to run), but only {format_bytes(free)} of {where} "
            f"is available on {device}. Choose bfloat16, a smaller model, or two adapters on one base (loaded "
            f"once), or a memory budget that offloads the rest (CLI: --max-memory); an operator who knows it fits "
            f"sets {SKIP_MEMORY_CHECK_ENV}=1 (CLI: --skip-memory-check)."
        )


def describe_tokenizer_difference(a: Any, b: Any) -> str | None:
    """None when two tokenizers agree on vocabulary and special tokens, else a sentence saying what differs."""
    problems = []
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a != vocab_b:
        only_a = sorted(set(vocab_a) - set(vocab_b))[:5]
        only_b = sorted(set(vocab_b) - set(vocab_a))[:5]
        moved = sum(1 for tok, idx in vocab_a.items() if tok in vocab_b and vocab_b[tok] != idx)
        problems.append(
            f"vocabularies differ (sizes {len(vocab_a)} vs {len(vocab_b)}; only in base e.g. {only_a}; "
            f"only in unlearned e.g. {only_b}; {moved} shared tokens with other ids)"
        )
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            problems.append(f"{attr} differs ({getattr(a, attr, None)!r} vs {getattr(b, attr, None)!r})")
    return "; ".join(problems) or None
