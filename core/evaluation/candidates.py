"""The models to evaluate resolved to names, steps, methods and cache identities (hashes of their files or
weights), and the dataset's hash."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.common.cache import content_hash, file_hash
from core.common.errors import UserError
from core.data.qa import SplitData
from core.evaluation.run_names import RunIdentity, infer_method, infer_run
from core.evaluation.settings import EvalModel, ModelInput
from core.models.loading import resolve_device
from core.models.spec import DEMO_PREFIX, ModelSpec, resolve_spec

_HASHED_FILE_LIMIT = 64 * 2**20  # bigger weight files are identified by size and mtime instead of content
_MODEL_FILE_SUFFIXES = (".safetensors", ".gguf", ".bin", ".json", ".model", ".txt", ".jinja")
_NOT_MODEL_FILES = {"manifest.json", "run.json"}


@dataclass
class Candidate:
    """A model to evaluate with its resolved name and cache identity."""

    name: str
    method: str
    step: int | None
    identity: Any
    source: EvalModel

    @property
    def label(self) -> str:
        return self.name if self.step is None else f"{self.name}@{self.step}"

    @property
    def group(self) -> tuple[Any, ...]:
        """Models with equal groups share a backbone, so they are evaluated one after the other."""
        spec = self.source.spec
        return ("loaded", id(self.source.model)) if spec is None else ("spec", *map(str, spec.backbone_key()))


def _safe_name(name: str) -> str:
    """A name that is also a folder name (the result folder is named after the model)."""
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "model"


def as_eval_model(entry: ModelInput, **spec_options: Any) -> EvalModel:
    if isinstance(entry, EvalModel):
        return entry
    if isinstance(entry, ModelSpec):
        return EvalModel(spec=entry)
    if isinstance(entry, str):
        return EvalModel(spec=ModelSpec.parse(entry, **spec_options))
    if isinstance(entry, tuple) and len(entry) == 3:
        name, model, tokenizer = entry
        return EvalModel(model=model, tokenizer=tokenizer, name=name)
    raise UserError(f"cannot evaluate {entry!r}: give a ModelSpec, a spec string or (name, model, tokenizer)")


def to_candidate(entry: EvalModel) -> Candidate:
    if entry.spec is None:
        if entry.model is None or entry.tokenizer is None:
            raise UserError("an EvalModel needs a spec, or a model and its tokenizer")
        if not entry.name:
            raise UserError("a loaded model needs a name")
        name = _safe_name(entry.name)
        identity = entry.identity or weights_identity(entry.model, entry.tokenizer)
        return Candidate(name, entry.method or infer_method(name), entry.step, identity, entry)
    where = _demo_run(entry.spec.source)
    spec = resolve_spec(entry.spec)
    entry = dataclasses.replace(entry, spec=spec)
    where = where or infer_run(Path(spec.adapter or spec.source))
    name = _safe_name(entry.name or where.model)
    step = entry.step if entry.name else where.step
    return Candidate(name, entry.method or infer_method(name), step, spec_identity(spec), entry)


def _demo_run(source: str) -> RunIdentity | None:
    """`demo:npo@3` is run npo at step 3 and `demo:oracle` the model oracle (not their cache folders' names)."""
    if not source.startswith(DEMO_PREFIX):
        return None
    name, _, step = source[len(DEMO_PREFIX) :].strip().lower().partition("@")
    return RunIdentity(name, infer_method(name), int(step) if step.isdigit() else None)


def resolve_candidates(models: Sequence[ModelInput]) -> list[Candidate]:
    candidates = [to_candidate(as_eval_model(model)) for model in models]
    labels = [candidate.label for candidate in candidates]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"several models are named {', '.join(repeated)}; give each its own name")
    if not candidates:
        raise UserError("no model to evaluate")
    return candidates


def _file_fingerprint(path: Path) -> Any:
    stat = path.stat()
    if stat.st_size <= _HASHED_FILE_LIMIT:
        return file_hash(path)
    return [stat.st_size, stat.st_mtime_ns]


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """Content hashes (size + mtime for big weight files) of the model, adapter and tokenizer files in a folder."""
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and path.suffix in _MODEL_FILE_SUFFIXES
        and path.name not in _NOT_MODEL_FILES
        and not path.name.startswith(".")
    )
    return {path.name: _file_fingerprint(path) for path in files}


def spec_identity(spec: ModelSpec) -> dict[str, Any]:
    """What identifies a resolved spec's weights: the spec itself and the fingerprints of its local folders."""
    folders = {"source": spec.source, "adapter": spec.adapter}
    files = {role: folder_fingerprint(Path(path)) for role, path in folders.items() if path and Path(path).is_dir()}
    return {"spec": dataclasses.asdict(spec), "device": resolve_device(spec.device).type, "files": files}


def weights_identity(model: torch.nn.Module, tokenizer: Any) -> str:
    """A hash of a loaded model's parameters and buffers (with dtype and device) and of its tokenizer."""
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:{tensor.device.type}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    vocab = sorted(tokenizer.get_vocab().items())
    return content_hash(digest.hexdigest(), type(tokenizer).__name__, vocab, getattr(tokenizer, "chat_template", None))


def dataset_hash(dataset: SplitData) -> str:
    """A hash of every QA split's records (refusals play no part in evaluation)."""
    records = {name: [item.to_record() for item in split] for name, split in dataset.splits().items()}
    return content_hash(records | ({"muse": dataset.muse.records()} if dataset.muse else {}))
