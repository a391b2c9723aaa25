"""Bounds on what a browser or the command line can ask of the core, and the checks that enforce them.

Every entry point (dashboard page, CLI, library call) goes through the core, so the bounds live here: the pages
read the same constants for their widgets' `max_chars` / `max_value`, and the core refuses anything beyond them
with a UserError before it tokenises, parses or allocates. `ensure_fits` refuses work whose memory estimate does
not fit what the device has free: on a CPU, PyTorch's allocator raises a RuntimeError (not MemoryError) or the
kernel's OOM killer ends the whole server, so asking first is the only way to keep the app up.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import torch

from core.common.errors import UserError

log = logging.getLogger(__name__)

MiB = 2**20
GiB = 2**30

# ---------------------------------------------------------------------------------------------- bounds

MAX_TEXT_CHARS = 20_000  # one prompt or one answer; checked before tokenisation (a 4 MB prompt took 5 s and 1 GB)
MAX_QA_FILE_BYTES = 64 * MiB  # one QA set file (JSON, JSONL, CSV, parquet) or refusal-lines file
MAX_RESULT_FILE_BYTES = 64 * MiB  # one result file (EVAL/SUMMARY JSON, legacy TOFU log, aggregate CSV, ingest JSON)
MAX_TOP_K = 100  # alternatives listed per scored token (probe)
MAX_IG_STEPS = 512  # integrated-gradients quadrature points (attribution)
MAX_SHAPLEY_SAMPLES = 512  # Shapley sampling feature orders (attribution)
MAX_RELEARN_STEP = 1_000  # the last relearning step (LoRA fine-tuning steps on the copy)
MAX_RELEARN_POINTS = 32  # evaluation points on the relearning curve
MAX_BATCH_SIZE = 256  # items or rows per forward pass
MAX_NEW_TOKENS = 2_048  # tokens generated per side
MAX_DRIFT_ITEMS = 1_000  # items per set in the hidden-state drift view
MAX_PATH_CHARS = 4_096  # one typed file or folder path (Linux's PATH_MAX)
MAX_PATH_LIST_CHARS = 20_000  # a box of result folders, one per line: a few hundred paths

MEMORY_HEADROOM = 0.9  # use at most this share of the free memory: the OS, the browser and other sessions need some
FORWARD_ACTIVATION_FACTOR = 16  # live tensors per hidden value without gradients (one layer's MLP, attention, residual)


def check_text(text: str | None, what: str) -> None:
    """Refuse `text` longer than MAX_TEXT_CHARS (None and short texts pass)."""
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise UserError(f"the {what} has {len(text):,} characters, more than the {MAX_TEXT_CHARS:,} allowed")


def check_range(value: int, low: int, high: int, what: str) -> None:
    """Refuse an integer setting outside [low, high], naming the setting and its bounds."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{what} must be a whole number, at least {low:,} and at most {high:,}, not {value!r}")


def check_file_size(path: Path, limit: int, what: str) -> None:
    """Refuse a file bigger than `limit` bytes before reading it (a huge file is not parsed for minutes)."""
    size = path.stat().st_size
    if size > limit:
        raise UserError(
            f"{path}: {size / MiB:,.1f} MiB is more than the {limit / MiB:,.0f} MiB allowed for a {what}; "
            "split it or keep only the items you need"
        )


def nesting_message() -> str:
    """What is wrong with JSON nested deeper than Python's recursion limit (e.g. '[[[[…' from a hostile upload)."""
    return f"JSON nested too deeply to read (more than about {sys.getrecursionlimit()} levels)"


def nesting_error(where: str) -> UserError:
    return UserError(f"{where}: {nesting_message()}")


def loads(text: str, where: str) -> Any:
    """json.loads with deep nesting as a UserError; a JSONDecodeError is left to the caller (it names the line)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise nesting_error(where) from None


# ---------------------------------------------------------------------------------------------- memory


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory for new tensors on `device`: system RAM on a CPU, free plus cached-unused memory on CUDA;
    None where it cannot be known (MPS, other accelerators)."""
    device = torch.device(device)
    if device.type == "cpu":
        return int(psutil.virtual_memory().available)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + cached)
    return None


def ensure_fits(bytes_needed: int, device: torch.device | str, what: str) -> None:
    """Refuse `what` with a UserError when `bytes_needed` is more than MEMORY_HEADROOM of the free memory."""
    free = available_bytes(device)
    if free is None:
        return
    log.debug("%s needs about %.2f GiB; %.2f GiB free on %s", what, bytes_needed / GiB, free / GiB, device)
    if bytes_needed > MEMORY_HEADROOM * free:
        raise UserError(
            f"{what} needs about {format_bytes(bytes_needed)} of memory but only {format_bytes(free)} is free on "
            f"{torch.device(device).type}; try fewer items, a smaller batch, shorter inputs, a smaller dtype or a "
            "smaller model"
        )


def format_bytes(count: float) -> str:
    """A byte count as people read it in a message: "1.25 GiB" or "300 MiB"."""
    return f"{count / GiB:.2f} GiB" if count >= GiB else f"{count / MiB:.0f} MiB"


# What PyTorch's CPU and CUDA allocators say when they cannot allocate: a RuntimeError, not a MemoryError.
_ALLOCATOR_FAILURES = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure: Python's MemoryError, torch.OutOfMemoryError, or the RuntimeError
    PyTorch's CPU allocator raises ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _ALLOCATOR_FAILURES)


def module_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of the module's parameters and buffers, each storage once; as `dtype` where given (a converted copy)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        size = tensor.element_size() if dtype is None or not tensor.is_floating_point() else _itemsize(dtype)
        total += tensor.numel() * size
    return total


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class ModelShape(NamedTuple):
    hidden: int
    layers: int
    heads: int
    vocab: int


def model_shape(model: torch.nn.Module) -> ModelShape:
    """Hidden size, layers, attention heads and vocabulary size from the model's config (large defaults where a
    config lacks one), for activation estimates."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config

    def read(*names: str, default: int) -> int:
        return int(next((value for name in names if (value := getattr(config, name, None))), default))

    return ModelShape(
        hidden=read("hidden_size", "n_embd", default=4096),
        layers=read("num_hidden_layers", "n_layer", default=32),
        heads=read("num_attention_heads", "n_head", default=32),
        vocab=read("vocab_size", default=50_000),
    )


def activation_bytes(batch: int, seq: int, hidden: int, layers: int, itemsize: int, factor: int) -> int:
    """Rough activation memory: batch × seq × hidden × layers × bytes × factor (factor: tensors per value)."""
    return batch * seq * hidden * layers * itemsize * factor


def attention_bytes(batch: int, seq: int, heads: int, layers: int, itemsize: int, factor: int) -> int:
    """Attention maps: batch × heads × seq² × layers × bytes × factor (what grows fastest with the length)."""
    return batch * heads * seq * seq * layers * itemsize * factor


def saved_for_backward(shape: ModelShape, batch: int, seq: int, itemsize: int) -> int:
    """What autograd keeps over one forward pass with gradients: per layer and sequence about 4 hidden-sized
    values per token and 3 attention maps. Fitted to measured peaks of integrated gradients on SmolLM2-135M on a
    CPU (110 and 310 tokens: 1.2 and 2.2 GiB estimated, 1.5 and 2.7 GiB peak growth, which includes about 0.3 GiB
    of fixed overhead that MEMORY_HEADROOM leaves room for)."""
    return activation_bytes(batch, seq, shape.hidden, shape.layers, itemsize, 4) + attention_bytes(
        batch, seq, shape.heads, shape.layers, itemsize, 3
    )
