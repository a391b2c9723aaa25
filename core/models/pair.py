"""ModelSpec → ModelPair: a base and an unlearned causal LM with one shared tokenizer, a device and locks.

A pair whose two sides share a backbone (the same weights with a PEFT adapter on one or both sides) loads
that backbone once: each side is the backbone with its adapter switched on, or with adapters disabled.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import torch

from core.common.errors import UserError
from core.common.limits import available_bytes, format_bytes
from core.models.embedded import check_gguf

log = logging.getLogger(__name__)

SIDES = ("base", "unlearned")
DEMO_PREFIX = "demo:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# Operator opt-ins, read from the environment of whoever starts the server (never from a browser).
TRUST_REMOTE_CODE_ENV = "ULENS_TRUST_REMOTE_CODE"
ALLOW_PICKLE_ENV = "ULENS_ALLOW_PICKLE"
SKIP_MEMORY_CHECK_ENV = "ULENS_SKIP_MEMORY_CHECK"
_TRUE = {"1", "true", "yes", "on"}
LOAD_MARGIN = 1.2  # weights × this, for the loader's temporary copies and the first passes' activations
LOAD_OVERHEAD = 256 * 2**20  # plus this much for the tokenizer, the app and the allocator's slack
WAIT_POLL_S = 1.0  # how often a waiting caller is called back (a Streamlit rerun can stop the wait in between)
WaitCallback = Callable[[str | None, bool], None]
_JOB: contextvars.ContextVar[tuple[str | None, WaitCallback | None]] = contextvars.ContextVar(
    "ulens_model_job", default=(None, None)
)


def env_flag(name: str) -> bool:
    """Whether environment variable `name` is set to 1 / true / yes / on."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def operator_opt_ins() -> dict[str, bool]:
    """ModelSpec's opt-ins for remote code and pickle weights as the environment sets them: a server takes them
    from whoever started it, so nobody who merely reaches its page can switch them on."""
    return {"trust_remote_code": env_flag(TRUST_REMOTE_CODE_ENV), "allow_unsafe_weights": env_flag(ALLOW_PICKLE_ENV)}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to load it.

    `source` is a local HF folder, a hub id, a `.gguf` file, a PEFT adapter folder (its base is read from
    adapter_config.json) or `demo:<name>` for the embedded demo models.
    """

    source: str
    revision: str | None = None
    adapter: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    allow_unsafe_weights: bool = False

    @classmethod
    def parse(cls, text: str, **options: Any) -> ModelSpec:
        """Parse `SOURCE[@REVISION][::adapter=DIR][::gguf=FILE]`; keyword options set the other fields."""
        text = text.strip()
        if not text:
            raise UserError("model spec is empty")
        source, *extras = text.split("::")
        fields: dict[str, Any] = {}
        for extra in extras:
            key, sep, value = extra.partition("=")
            if not sep or key not in {"adapter", "gguf", "revision"}:
                raise UserError(f"unknown model spec option {extra!r} in {text!r} (use adapter=, gguf=, revision=)")
            fields["gguf_file" if key == "gguf" else key] = value
        if "@" in source and not Path(source).exists() and not source.startswith(DEMO_PREFIX):
            source, fields["revision"] = source.rsplit("@", 1)
        return cls(source=source, **fields, **options)

    def backbone_key(self) -> tuple[Any, ...]:
        """Identifies the weights before any adapter: two specs with the same key can share them."""
        return (
            self.source,
            self.revision,
            self.gguf_file,
            self.dtype,
            self.device,
            self.device_map,
            self.trust_remote_code,
            self.allow_unsafe_weights,
        )

    def label(self) -> str:
        name = self.source if not self.adapter else f"{self.source} + {Path(self.adapter).name}"
        return f"{name}@{self.revision}" if self.revision else name


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


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """Turn demo names, .gguf paths and adapter folders into an explicit spec; check local paths exist."""
    if spec.source.startswith(DEMO_PREFIX):
        from core.unlearn.demo import resolve_demo_spec

        return resolve_spec(resolve_demo_spec(spec.source[len(DEMO_PREFIX) :], spec))
    path = Path(spec.source).expanduser()
    if spec.adapter and not (Path(spec.adapter).expanduser() / "adapter_config.json").is_file():
        raise UserError(f"adapter folder not found or has no adapter_config.json: {spec.adapter}")
    if spec.adapter:
        check_adapter_weights(Path(spec.adapter).expanduser(), spec.allow_unsafe_weights)
    if path.is_file() and path.suffix == ".gguf":
        check_gguf(path)
        return replace(spec, source=str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            if spec.adapter:
                raise UserError(f"{path} is an adapter, and another adapter was given too ({spec.adapter})")
            base = read_json_file(path / "adapter_config.json", "a PEFT adapter config").get("base_model_name_or_path")
            if not base:
                raise UserError(f"adapter {path} does not name its base model; pass it as SOURCE::adapter={path}")
            return resolve_spec(replace(spec, source=base, adapter=str(path)))
        if spec.gguf_file and not (path / spec.gguf_file).is_file():
            raise UserError(f"GGUF file {spec.gguf_file} not found in {path}")
        if not spec.gguf_file and not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model folder (no config.json), a PEFT adapter or a .gguf file")
        check_model_files(path, spec.gguf_file)
        return replace(spec, source=str(path))
    looks_local = spec.source.startswith(("/", ".", "~")) or spec.source.count("/") > 1
    if looks_local or not _HUB_ID.match(spec.source):
        raise UserError(f"model path not found: {spec.source}")
    if not _hub_reachable():
        raise UserError(
            f"model path not found: {spec.source}, and as a hub id it cannot be fetched: the hub is not reachable "
            "from here (offline). Download the model where a hub is reachable and pass its folder."
        )
    return spec


def check_model_files(folder: Path, gguf_file: str | None) -> None:
    """Read what a local model folder's loader will trust (config, safetensors headers, GGUF tables) and raise a
    UserError naming the file that is cut short or corrupt, before any weights are loaded."""
    if gguf_file:
        check_gguf(folder / gguf_file)
        return
    read_json_file(folder / "config.json", "a model config")
    for file in _safetensors_files(folder):
        check_safetensors(file)


def check_adapter_weights(folder: Path, allow_unsafe_weights: bool) -> None:
    """Refuse an adapter whose only weights are pickle (adapter_model.bin) unless pickle weights are opted in:
    PEFT would unpickle it, and unpickling can run code, the same rule as for a model's .bin weights. A cut or
    corrupt adapter config or safetensors file is a UserError naming it."""
    read_json_file(folder / "adapter_config.json", "a PEFT adapter config")
    if (folder / "adapter_model.safetensors").is_file():
        check_safetensors(folder / "adapter_model.safetensors")
        return
    if allow_unsafe_weights:
        return
    if (folder / "adapter_model.bin").is_file():
        raise UserError(
            f"adapter {folder} has only pickle weights (adapter_model.bin, no adapter_model.safetensors). Loading "
            "pickle weights can run code; whoever starts the server opts in with ULENS_ALLOW_PICKLE=1 (CLI: "
            "--allow-unsafe-weights), only for an adapter they trust."
        )


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick connect to the hub endpoint, so an offline machine gets an answer in seconds, not after retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


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


def load_backbone(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Load the weights named by a resolved spec (without its adapter), frozen and in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"revision": spec.revision, "dtype": dtype, "trust_remote_code": spec.trust_remote_code}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    else:
        kwargs["use_safetensors"] = None if spec.allow_unsafe_weights else True
    if spec.device_map:
        kwargs["device_map"] = spec.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error(spec, exc) from exc
    if spec.gguf_file:
        model.hf_quantizer = None  # dequantised to dense weights already
    if not spec.device_map:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


_SAFETENSORS_FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}  # cast to the load dtype
_SAFETENSORS_OTHER = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not a header


def _safetensors_files(folder: Path) -> list[Path]:
    """The weight files a folder's model loads: those of the shard index, else model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = read_json_file(index, "a safetensors shard index").get("weight_map")
        if not isinstance(names, dict) or not all(isinstance(name, str) for name in names.values()):
            raise UserError(f"{index} has no weight_map of tensor names to file names")
        files = {folder / name for name in names.values()}
        if any(file.parent != folder for file in files):
            raise UserError(f"{index} names weight files outside its folder")
        return sorted(files)
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A model folder's JSON file (config, adapter config, shard index) as a dict, or a UserError naming it."""
    try:
        if path.stat().st_size > _MAX_HEADER:
            raise ValueError(f"larger than {_MAX_HEADER // 2**20} MB")
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{path} is not readable as {what}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not readable as {what}: expected a JSON object")
    return data


def check_safetensors(path: Path) -> dict[str, Any]:
    """The header of a safetensors file, or a UserError naming the file when it is cut short, corrupt or not one
    (the loader would fail later with a bare SafetensorError). Reads the header only."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or not 0 < length <= min(_MAX_HEADER, size - 8):
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        if 8 + length + max(ends, default=0) > size:
            raise ValueError(f"cut short: its tensors need {8 + length + max(ends)} bytes, the file has {size}")
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise UserError(f"{path} is not a whole safetensors file ({exc})") from None
    return header


def _safetensors_bytes(folder: Path, dtype: torch.dtype) -> int | None:
    """Bytes of a folder's safetensors weights once loaded in `dtype`, from the files' headers alone (no weights
    are read): floating tensors are cast to `dtype`, others keep their size. None without safetensors files."""
    files = _safetensors_files(folder)
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


def check_memory(specs: dict[str, ModelSpec], device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a pair whose weights will not fit, before loading any: on a CPU the allocator raises RuntimeError
    (not MemoryError) or the kernel's OOM killer ends the whole server, so running out must not be tried."""
    need = estimate_pair_bytes(specs, dtype)
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
            f"once); an operator who knows it fits sets {SKIP_MEMORY_CHECK_ENV}=1 (CLI: --skip-memory-check)."
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


@contextlib.contextmanager
def model_job(label: str, on_wait: WaitCallback | None = None) -> Iterator[None]:
    """Name the work this thread does on pairs inside the block (e.g. "attribution"), so that another caller
    blocked on the same side can say what it waits for; and, while a side is busy with someone else's job,
    call `on_wait(holder, True)` right away and every WAIT_POLL_S (holder: the other job's label, or None), then
    `on_wait(holder, False)` once the side is free. Every `pair.use` / `pair.joint` inside takes these."""
    token = _JOB.set((label, on_wait))
    try:
        yield
    finally:
        _JOB.reset(token)


class JobLock:
    """A re-entrant lock that remembers the label of the job holding it, so a waiting caller can say what it waits
    for instead of hanging silently. `with lock:` works as with an RLock (an unnamed job)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # re-entries by the owning thread; only the owner writes it
        self.holder: str | None = None  # the outermost job's label while held (a str write is atomic)

    def acquire(self, job: str | None = None, on_wait: WaitCallback | None = None) -> None:
        """Take the lock; while another thread holds it, call `on_wait` (see `model_job`). An exception from
        `on_wait` (a Streamlit rerun, say) ends the wait without the lock."""
        if not self._lock.acquire(blocking=False):
            if on_wait is None:
                self._lock.acquire()
            else:
                while True:
                    holder = self.holder  # read before the wait: the note names the job that made us wait
                    on_wait(holder, True)
                    if self._lock.acquire(timeout=WAIT_POLL_S):
                        break
                try:
                    on_wait(holder, False)
                except BaseException:
                    self._lock.release()
                    raise
        self._depth += 1
        if self._depth == 1:
            self.holder = job

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.holder = None
        self._lock.release()

    @contextlib.contextmanager
    def hold(self, job: str | None = None, on_wait: WaitCallback | None = None) -> Iterator[None]:
        self.acquire(job, on_wait)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _job(job: str | None, on_wait: WaitCallback | None) -> tuple[str | None, WaitCallback | None]:
    """Explicit arguments, else what the enclosing `model_job` set."""
    current_job, current_on_wait = _JOB.get()
    return job or current_job, on_wait or current_on_wait


class _Side:
    """One side of a pair: a model, the lock that guards it, and how to switch its adapter on."""

    def __init__(self, model: torch.nn.Module, lock: JobLock, adapter: str | None, peft: bool) -> None:
        self.model = model
        self.lock = lock
        self.adapter = adapter
        self.peft = peft

    @contextlib.contextmanager
    def active(self, job: str | None = None, on_wait: WaitCallback | None = None) -> Iterator[torch.nn.Module]:
        with self.lock.hold(job, on_wait):
            if not self.peft:
                yield self.model
            elif self.adapter is None:
                with self.model.disable_adapter():
                    yield self.model.get_base_model()
            else:
                self.model.set_adapter(self.adapter)
                self.model.requires_grad_(False)  # set_adapter marks the adapter trainable; sides are frozen
                yield self.model.get_base_model()


class ModelPair:
    """Base and unlearned models with one tokenizer. Use a side only inside `pair.use(side)`."""

    def __init__(
        self,
        sides: dict[str, _Side],
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        specs: dict[str, ModelSpec] | None = None,
    ) -> None:
        self._sides = sides
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.specs = specs or {}

    @classmethod
    def from_models(cls, base: torch.nn.Module, unlearned: torch.nn.Module, tokenizer: Any) -> ModelPair:
        """Wrap already loaded models (tests, notebooks). The same object twice shares one lock."""
        base_lock = JobLock()
        unlearned_lock = base_lock if unlearned is base else JobLock()
        for model in (base, unlearned):
            model.eval()
            model.requires_grad_(False)
        param = next(base.parameters())
        return cls(
            {"base": _Side(base, base_lock, None, False), "unlearned": _Side(unlearned, unlearned_lock, None, False)},
            tokenizer,
            param.device,
            param.dtype,
        )

    @classmethod
    def load(
        cls,
        base: ModelSpec,
        unlearned: ModelSpec,
        progress: Callable[[str], None] | None = None,
        memory_check: bool | None = None,
    ) -> ModelPair:
        """Load both sides in order (never two cold loads at once), sharing a backbone where the specs allow.
        First refuse a pair that will not fit in memory (`memory_check`; default: unless the environment sets
        ULENS_SKIP_MEMORY_CHECK)."""
        say = progress or (lambda message: log.info(message))
        specs = {"base": resolve_spec(base), "unlearned": resolve_spec(unlearned)}
        device = resolve_device(specs["base"].device)
        dtype = resolve_dtype(specs["base"].dtype, device)
        if memory_check if memory_check is not None else not env_flag(SKIP_MEMORY_CHECK_ENV):
            check_memory(specs, device, dtype)
        say(f"loading tokenizer of {specs['base'].label()}")
        tokenizer = load_tokenizer(specs["base"])
        if specs["unlearned"].backbone_key() != specs["base"].backbone_key():
            other = load_tokenizer(specs["unlearned"])
            difference = describe_tokenizer_difference(tokenizer, other)
            if difference:
                raise UserError(f"the two models do not share a tokenizer, so tokens cannot be compared: {difference}")
        sides: dict[str, _Side] = {}
        backbones: dict[tuple[Any, ...], tuple[torch.nn.Module, JobLock]] = {}
        for name in SIDES:
            spec = specs[name]
            key = spec.backbone_key()
            if key not in backbones:
                say(f"loading {name} model {spec.label()}")
                backbones[key] = (load_backbone(spec, device, dtype), JobLock())
        for key, (model, lock) in backbones.items():
            users = [name for name in SIDES if specs[name].backbone_key() == key]
            adapters = {name: specs[name].adapter for name in users}
            if not any(adapters.values()):
                for name in users:
                    sides[name] = _Side(model, lock, None, False)
                continue
            say(f"attaching adapter(s) {', '.join(a for a in adapters.values() if a)}")
            peft_model = _attach_adapters(model, adapters)
            for name in users:
                sides[name] = _Side(peft_model, lock, name if adapters[name] else None, True)
        return cls(sides, tokenizer, device, dtype, specs)

    @contextlib.contextmanager
    def use(self, side: str, job: str | None = None, on_wait: WaitCallback | None = None) -> Iterator[torch.nn.Module]:
        """Hold the side's lock and yield its causal LM with the right adapter active. `job` labels the work for
        other callers' waiting notes and `on_wait` is called while another job holds the side (see `model_job`,
        which sets both for a whole block)."""
        if side not in self._sides:
            raise UserError(f"unknown side {side!r}; choose one of {SIDES}")
        with self._sides[side].active(*_job(job, on_wait)) as model:
            yield model

    def holder(self, side: str) -> str | None:
        """The label of the job holding the side now (None: free, or an unnamed job)."""
        return self._sides[side].lock.holder

    @contextlib.contextmanager
    def joint(
        self, job: str | None = None, on_wait: WaitCallback | None = None
    ) -> Iterator[tuple[torch.nn.Module, list[str]] | None]:
        """Where both sides are adapters (or no adapter) on one PEFT backbone, yield that model and each side's
        adapter name for PEFT's mixed batches (`model(..., adapter_names=[...])`, "__base__" = adapters off), so
        one forward pass serves both sides: the shared layers see both rows in one matmul. Yields None otherwise.
        `job` and `on_wait` as for `use`."""
        base, unlearned = self._sides["base"], self._sides["unlearned"]
        if not (base.peft and unlearned.peft and base.model is unlearned.model):
            yield None
            return
        with base.lock.hold(*_job(job, on_wait)):
            yield base.model, [side.adapter or "__base__" for side in (base, unlearned)]

    @property
    def shares_backbone(self) -> bool:
        return self._sides["base"].model is self._sides["unlearned"].model

    @property
    def context_length(self) -> int:
        config = self._sides["base"].model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(limit or self.tokenizer.model_max_length)

    def parameter_bytes(self) -> int:
        """Bytes held by the pair's parameters, each storage counted once (shared weights are not doubled)."""
        seen: set[int] = set()
        total = 0
        for side in self._sides.values():
            for tensor in list(side.model.parameters()) + list(side.model.buffers()):
                pointer = tensor.untyped_storage().data_ptr()
                if pointer not in seen:
                    seen.add(pointer)
                    total += tensor.untyped_storage().nbytes()
        return total

    def describe(self) -> dict[str, Any]:
        return {
            "base": self.specs["base"].label() if "base" in self.specs else "in-memory model",
            "unlearned": self.specs["unlearned"].label() if "unlearned" in self.specs else "in-memory model",
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "shares_backbone": self.shares_backbone,
            "parameter_mb": round(self.parameter_bytes() / 2**20, 1),
            "specs": {name: asdict(spec) for name, spec in self.specs.items()},
        }


def _attach_adapters(model: torch.nn.Module, adapters: dict[str, str | None]) -> torch.nn.Module:
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


DEFAULT_BASE, DEFAULT_UNLEARNED = "demo:target", "demo:unlearned"  # the pair opened when none is named
