"""Where a model comes from: ModelSpec, its text form, the operator's opt-ins, and the checks a spec passes before any
weights are loaded (the paths exist; config, adapter config, shard index and safetensors headers are whole).

`resolve_spec` turns names into explicit specs and never trains or downloads: a `demo:NAME` that is not built yet is
a UserError saying how to build it (core.unlearn.demo builds demo models, and only when asked).
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.common.errors import UserError
from core.models.embedded import check_gguf

DEMO_PREFIX = "demo:"
DEFAULT_BASE, DEFAULT_UNLEARNED = "demo:target", "demo:unlearned"  # the pair opened when none is named
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Operator opt-ins, read from the environment of whoever starts the server (never from a browser).
TRUST_REMOTE_CODE_ENV = "ULENS_TRUST_REMOTE_CODE"
ALLOW_PICKLE_ENV = "ULENS_ALLOW_PICKLE"
SKIP_MEMORY_CHECK_ENV = "ULENS_SKIP_MEMORY_CHECK"
_TRUE = {"1", "true", "yes", "on"}
_MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not a header


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


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """Turn demo names, .gguf paths and adapter folders into an explicit spec; check local paths exist. Nothing is
    trained or downloaded here: a demo model that is not built yet is a UserError saying how to build it."""
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
    for file in safetensors_files(folder):
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


def safetensors_files(folder: Path) -> list[Path]:
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
