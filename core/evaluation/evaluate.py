"""Evaluate models and checkpoints on forget / retain / holdout / world-facts splits → EvalResult + result files.

Teacher-forced metrics share one forward pass per model per batch: an item's answer, paraphrased and perturbed
answers are rows of the same batch, and the logits at the answer positions give probability, truth ratio, exact
memorisation, extraction strength and the MIA scores (LOSS, ZLib, Min-K%, Min-K%++). ROUGE needs greedy generation
and is optional. Each model's numbers are written in open-unlearning's TOFU_EVAL/TOFU_SUMMARY layout (read back by
core.evaluation.ingest) and cached by content hash of the model files, the dataset and the settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from core.common import Registry
from core.common.cache import atomic_write_text, cache_home, content_hash, file_hash
from core.common.errors import UserError
from core.common.limits import (
    FORWARD_ACTIVATION_FACTOR,
    MAX_BATCH_SIZE,
    MAX_NEW_TOKENS,
    activation_bytes,
    check_range,
    ensure_fits,
    model_shape,
)
from core.data.qa import SPLIT_NAMES, QAItem, SplitData, load_demo_splits, load_split_folder
from core.evaluation import metrics
from core.evaluation.ingest import (
    RunIdentity,
    forget_truth_ratios,
    infer_method,
    infer_run,
    ingest,
    write_open_unlearning,
)
from core.models.adapters import merged_adapter
from core.models.loading import load_backbone, load_tokenizer, resolve_device, resolve_dtype
from core.models.spec import DEMO_PREFIX, ModelSpec, resolve_spec
from core.scoring.encoding import Encoded, encode
from core.scoring.forward import shared_prefix_logits
from core.scoring.statistics import token_statistics
from core.unlearn.checkpoints import checkpoint_dirs, read_manifest
from core.unlearn.demo import DemoExperiment, register_evaluation
from core.unlearn.recipes import BASE, ORACLE

log = logging.getLogger(__name__)

CODE_VERSION = "1"  # bump when a number's meaning changes: cached evaluations are then recomputed
RESULT_FORMAT = "unlearning-lens/evaluation/1"
BENCHMARK = "TOFU"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 200
SUMMARY_COLUMNS = ["model", "method", "step", "split", "metric", "value"]
ITEM_COLUMNS = ["model", "method", "step", "metric", "field", "index", "option", "value"]
TEXT_COLUMNS = ["model", "method", "step", "metric", "field", "index", "text"]
SPLIT_PREFIXES = {"forget": "forget", "retain": "retain", "holdout": "holdout", "world_facts": "wf"}
MIA_SPLITS = ("forget", "holdout")
_HASHED_FILE_LIMIT = 64 * 2**20  # bigger weight files are identified by size and mtime instead of content
_MODEL_FILE_SUFFIXES = (".safetensors", ".gguf", ".bin", ".json", ".model", ".txt", ".jinja")
_NOT_MODEL_FILES = {"manifest.json", "run.json"}

Progress = Callable[[int, int, str], None]  # (batches done, batches in all, what is running)


# ---------------------------------------------------------------------------------------------- settings, inputs


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. batch_size counts items (each brings its answer, paraphrased and perturbed rows)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    rouge: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    generation_batch_size: int = DEFAULT_BATCH_SIZE
    chat: bool = True
    max_length: int | None = None

    def __post_init__(self) -> None:
        if min(self.batch_size, self.generation_batch_size, self.max_new_tokens) < 1:
            raise UserError("batch sizes and max_new_tokens must be at least 1")
        check_range(self.batch_size, 1, MAX_BATCH_SIZE, "batch size")
        check_range(self.generation_batch_size, 1, MAX_BATCH_SIZE, "generation batch size")
        check_range(self.max_new_tokens, 1, MAX_NEW_TOKENS, "max_new_tokens")

    def cache_fields(self) -> dict[str, Any]:
        """The settings that change numbers (batch sizes do not)."""
        fields = {"chat": self.chat, "max_length": self.max_length, "rouge": self.rouge}
        return fields | ({"max_new_tokens": self.max_new_tokens} if self.rouge else {})


@dataclass
class EvalModel:
    """One model to evaluate: a spec, or an already loaded model and tokenizer. Without a name, name and step come
    from its path (`<run>/checkpoint-<step>` → run name and step; `demo:npo@3` → npo, 3) and the method from the
    name; `identity` overrides the cache identity of a loaded model (default: a hash of its weights and vocabulary)."""

    spec: ModelSpec | None = None
    model: torch.nn.Module | None = None
    tokenizer: Any = None
    name: str | None = None
    method: str | None = None
    step: int | None = None
    identity: str | None = None


ModelInput = ModelSpec | str | EvalModel | tuple[str, torch.nn.Module, Any]


@dataclass
class _Candidate:
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


def _as_eval_model(entry: ModelInput, **spec_options: Any) -> EvalModel:
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


def _candidate(entry: EvalModel) -> _Candidate:
    if entry.spec is None:
        if entry.model is None or entry.tokenizer is None:
            raise UserError("an EvalModel needs a spec, or a model and its tokenizer")
        if not entry.name:
            raise UserError("a loaded model needs a name")
        name = _safe_name(entry.name)
        identity = entry.identity or weights_identity(entry.model, entry.tokenizer)
        return _Candidate(name, entry.method or infer_method(name), entry.step, identity, entry)
    where = _demo_run(entry.spec.source)
    spec = resolve_spec(entry.spec)
    entry = dataclasses.replace(entry, spec=spec)
    where = where or infer_run(Path(spec.adapter or spec.source))
    name = _safe_name(entry.name or where.model)
    step = entry.step if entry.name else where.step
    return _Candidate(name, entry.method or infer_method(name), step, spec_identity(spec), entry)


def _demo_run(source: str) -> RunIdentity | None:
    """`demo:npo@3` is run npo at step 3 and `demo:oracle` the model oracle (not their cache folders' names)."""
    if not source.startswith(DEMO_PREFIX):
        return None
    name, _, step = source[len(DEMO_PREFIX) :].strip().lower().partition("@")
    return RunIdentity(name, infer_method(name), int(step) if step.isdigit() else None)


def _candidates(models: Sequence[ModelInput]) -> list[_Candidate]:
    candidates = [_candidate(_as_eval_model(model)) for model in models]
    labels = [candidate.label for candidate in candidates]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"several models are named {', '.join(repeated)}; give each its own name")
    if not candidates:
        raise UserError("no model to evaluate")
    return candidates


# ---------------------------------------------------------------------------------------------- identity


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
    return content_hash({name: [item.to_record() for item in split] for name, split in dataset.splits().items()})


# ---------------------------------------------------------------------------------------------- loading


class _Loader:
    """Opens models one at a time; a backbone stays loaded while the adapters that use it are evaluated."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._backbone: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self._peft: Any = None
        self._adapter: str | None = None
        self._loaded = 0

    @contextlib.contextmanager
    def open(self, candidate: _Candidate) -> Iterator[tuple[torch.nn.Module, Any]]:
        source = candidate.source
        if source.spec is None:
            yield source.model, source.tokenizer
            return
        spec = source.spec
        self._ensure_backbone(spec)
        if spec.adapter:
            self._switch_adapter(spec.adapter)
            with merged_adapter(self._peft):  # evaluation only reads: LoRA folded into the weights is faster
                yield self._backbone, self._tokenizer
        elif self._peft is not None:
            with self._peft.disable_adapter():
                yield self._backbone, self._tokenizer
        else:
            yield self._backbone, self._tokenizer

    def _ensure_backbone(self, spec: ModelSpec) -> None:
        if spec.backbone_key() == self._key:
            return
        self.close()
        device = resolve_device(spec.device)
        log.info("loading %s", spec.source)
        self._tokenizer = load_tokenizer(spec)
        self._backbone = load_backbone(spec, device, resolve_dtype(spec.dtype, device))
        self._key = spec.backbone_key()

    def _switch_adapter(self, path: str) -> None:
        """Load the adapter under a fresh name, activate it, then drop the previous one (PEFT needs one left)."""
        from peft import PeftModel

        self._loaded += 1
        name = f"eval{self._loaded}"
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._backbone, path, adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(path, adapter_name=name, is_trainable=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"could not load adapter {path}: {str(exc).splitlines()[0]}") from exc
        self._peft.set_adapter(name)
        if self._adapter is not None:
            self._peft.delete_adapter(self._adapter)
        self._adapter = name
        self._peft.eval()

    def close(self) -> None:
        self._key = self._backbone = self._tokenizer = self._peft = self._adapter = None


# ---------------------------------------------------------------------------------------------- rows and scores


@dataclass
class _Unit:
    """One item with its rows: the answer, then (when the split has one) the paraphrased answer, then the perturbed."""

    position: int
    split: str
    item: QAItem
    roles: list[str]
    rows: list[Encoded]

    @property
    def width(self) -> int:
        return max(len(row.input_ids) for row in self.rows)

    @property
    def answer_width(self) -> int:
        return max(len(row.input_ids) - row.score_from for row in self.rows)


@dataclass
class TokenScores:
    """One scored row under one model: per answer token its log-prob, the argmax id, the label, and μ/σ of log p."""

    logp: np.ndarray
    argmax: np.ndarray
    labels: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    @property
    def avg_loss(self) -> float:
        return metrics.average_loss(self.logp)


@dataclass
class ItemScores:
    """An item's rows scored: `paraphrased` is the answer's row where the split has no paraphrase."""

    split: str
    item: QAItem
    answer: TokenScores
    paraphrased: TokenScores
    perturbed: list[TokenScores]
    has_paraphrase: bool


def _roles(split: str, item: QAItem) -> list[tuple[str, str]]:
    paraphrase = split != "world_facts" and item.paraphrased_answer is not None
    roles = [("answer", item.answer)] + ([("paraphrased", item.paraphrased_answer)] if paraphrase else [])
    return roles + [("perturbed", text) for text in item.perturbed_answer]


def plan_units(dataset: SplitData, tokenizer: Any, chat: bool, max_length: int) -> list[_Unit]:
    """Every item of every split, tokenised once: the rows its teacher-forced metrics need."""
    units = []
    for split, qa in dataset.splits().items():
        for item in qa:
            roles = _roles(split, item)
            rows = [encode(tokenizer, item.question, text, chat, max_length) for _, text in roles]
            units.append(_Unit(len(units), split, item, [role for role, _ in roles], rows))
    return units


def plan_batches(units: list[_Unit], batch_size: int) -> list[list[_Unit]]:
    """Batches of items of similar answer and question lengths (less padding: an item's question is run once and
    its answers continue it, see `shared_prefix_logits`); the results do not depend on the batching."""
    ordered = sorted(units, key=lambda unit: (-unit.answer_width, -unit.width))
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


_STATISTICS = ("logp", "argmax", "mu", "sigma")  # what TokenScores keeps of token_statistics


def _row_scores(statistics: dict[str, torch.Tensor], targets: torch.Tensor, rows: list[Encoded]) -> list[TokenScores]:
    columns = {key: statistics[key].cpu().numpy() for key in _STATISTICS} | {"labels": targets.cpu().numpy()}
    bounds = np.cumsum([len(row.input_ids) - row.score_from for row in rows])[:-1]
    split = {key: np.split(value, bounds) for key, value in columns.items()}
    return [TokenScores(**{key: split[key][i] for key in split}) for i in range(len(rows))]


def _item_scores(unit: _Unit, rows: list[TokenScores]) -> ItemScores:
    by_role = dict(zip(unit.roles, rows, strict=True))
    perturbed = [row for role, row in zip(unit.roles, rows, strict=True) if role == "perturbed"]
    answer = by_role["answer"]
    paraphrased = by_role.get("paraphrased", answer)
    return ItemScores(unit.split, unit.item, answer, paraphrased, perturbed, "paraphrased" in by_role)


def _moments_mask(units: list[_Unit], device: torch.device) -> torch.Tensor:
    """Scored tokens that need μ/σ: the answer rows of the MIA splits (Min-K%++), a small share of all tokens."""
    flags = [
        (unit.split in MIA_SPLITS and role == "answer", len(row.input_ids) - row.score_from)
        for unit in units
        for role, row in zip(unit.roles, unit.rows, strict=True)
    ]
    wanted = torch.tensor([flag for flag, _ in flags], dtype=torch.bool)
    return wanted.repeat_interleave(torch.tensor([size for _, size in flags])).to(device)


def score_batch(model: torch.nn.Module, units: list[_Unit], pad_id: int, device: torch.device) -> list[ItemScores]:
    """One forward pass for every row of every item in the batch; an item's rows share its question's pass."""
    rows = [row for unit in units for row in unit.rows]
    with torch.inference_mode():
        logits, targets = shared_prefix_logits(model, rows, pad_id, device)
        statistics = token_statistics(logits, targets, _moments_mask(units, device))
    scores = iter(_row_scores(statistics, targets, rows))
    return [_item_scores(unit, [next(scores) for _ in unit.rows]) for unit in units]


# ---------------------------------------------------------------------------------------------- per-split metrics


def _prefixed(split: str, suffix: str) -> str:
    return f"{SPLIT_PREFIXES[split]}_{suffix}"


def _entry(items: list[ItemScores], values: list[Any], agg: float | None) -> dict[str, Any]:
    """An open-unlearning EVAL entry: the aggregate and one record per item, keyed by the item's index."""
    return {
        "agg_value": agg,
        "value_by_index": {str(s.item.index): value for s, value in zip(items, values, strict=True)},
    }


SplitMetric = Callable[[str, list[ItemScores]], dict[str, Any]]
SPLIT_METRICS: Registry[SplitMetric] = Registry("split metric")


def split_metric(name: str) -> Callable[[SplitMetric], SplitMetric]:
    """Register a builder of EVAL entries for one split's scored items (it returns {} where it does not apply)."""
    return SPLIT_METRICS.register(name=name)


def _probability_entry(items: list[ItemScores], rows: list[TokenScores]) -> dict[str, Any]:
    losses = [row.avg_loss for row in rows]
    probs = metrics.probability(losses)
    values = [{"prob": float(p), "avg_loss": loss} for p, loss in zip(probs, losses, strict=True)]
    return _entry(items, values, float(np.mean(probs)))


@split_metric("probability")
def _probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    return {_prefixed(split, "Q_A_Prob"): _probability_entry(items, [s.answer for s in items])}


@split_metric("paraphrased_probability")
def _paraphrased_probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if not all(s.has_paraphrase for s in items):
        return {}
    return {_prefixed(split, "Q_A_PARA_Prob"): _probability_entry(items, [s.paraphrased for s in items])}


def _with_perturbed(split: str, items: list[ItemScores]) -> bool:
    if all(s.perturbed for s in items):
        return True
    if any(s.perturbed for s in items):
        log.warning("%s: some items have no perturbed answers; truth ratio and MCQ are left out", split)
    return False


@split_metric("perturbed_probability")
def _perturbed_probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if not _with_perturbed(split, items):
        return {}
    losses = [[row.avg_loss for row in s.perturbed] for s in items]
    probs = [metrics.probability(row).tolist() for row in losses]
    values = [{"prob": p, "avg_loss": loss} for p, loss in zip(probs, losses, strict=True)]
    return {_prefixed(split, "Q_A_PERT_Prob"): _entry(items, values, float(np.mean(np.concatenate(probs))))}


_TRUTH_RATIO_NAMES = {"forget": ("forget_truth_ratio", metrics.truth_ratio_forget)}


def item_truth_ratios(items: list[ItemScores]) -> np.ndarray:
    """TOFU truth ratio per item: perturbed over paraphrased (the answer itself on world facts)."""
    return np.array(
        [metrics.truth_ratio([s.paraphrased.avg_loss], [[r.avg_loss for r in s.perturbed]])[0] for s in items]
    )


@split_metric("truth_ratio")
def _truth_ratio(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if not _with_perturbed(split, items):
        return {}
    name, aggregate = _TRUTH_RATIO_NAMES.get(split, (_prefixed(split, "Truth_Ratio"), metrics.truth_ratio_retain))
    ratios = item_truth_ratios(items)
    return {name: _entry(items, [{"score": float(r)} for r in ratios], aggregate(ratios))}


@split_metric("normalised_probability")
def _normalised_probability(split: str, items: list[ItemScores]) -> dict[str, Any]:
    if split != "world_facts" or not _with_perturbed(split, items):
        return {}
    values = [
        float(metrics.normalised_probability(metrics.probability([s.answer.avg_loss]), [_wrong_probs(s)])[0])
        for s in items
    ]
    return {
        _prefixed(split, "Q_A_Prob_normalised"): _entry(items, [{"prob": v} for v in values], float(np.mean(values)))
    }


def _wrong_probs(scores: ItemScores) -> np.ndarray:
    return metrics.probability([row.avg_loss for row in scores.perturbed])


@split_metric("mcq_accuracy")
def _mcq_accuracy(split: str, items: list[ItemScores]) -> dict[str, Any]:
    """The true answer against its wrong ones by mean token log-likelihood (answers differ in length)."""
    if split != "world_facts" or not _with_perturbed(split, items):
        return {}
    correct = [metrics.mcq_accuracy([[-s.answer.avg_loss] + [-r.avg_loss for r in s.perturbed]], [0]) for s in items]
    return {f"{split}/acc": _entry(items, [{"score": c} for c in correct], float(np.mean(correct)))}


@split_metric("memorisation")
def _memorisation(split: str, items: list[ItemScores]) -> dict[str, Any]:
    """Exact memorisation and extraction strength (open-unlearning's names on forget, prefixed elsewhere)."""
    out = {}
    for name, fn in (
        ("exact_memorization", metrics.exact_memorisation),
        ("extraction_strength", metrics.extraction_strength),
    ):
        values = [fn(s.answer.argmax, s.answer.labels) for s in items]
        key = name if split == "forget" else _prefixed(split, name)
        out[key] = _entry(items, [{"score": v} for v in values], float(np.mean(values)))
    return out


# ---------------------------------------------------------------------------------------------- MIA


MiaAttack = Callable[[ItemScores], float]
MIA_ATTACKS: Registry[MiaAttack] = Registry("MIA attack")
MIA_ATTACKS.register(lambda s: s.answer.avg_loss, name="mia_loss")
MIA_ATTACKS.register(lambda s: metrics.zlib_score(s.answer.avg_loss, s.item.answer), name="mia_zlib")
MIA_ATTACKS.register(lambda s: metrics.min_k_score(s.answer.logp), name="mia_min_k")
MIA_ATTACKS.register(
    lambda s: metrics.min_k_plus_plus_score(s.answer.logp, s.answer.mu, s.answer.sigma), name="mia_min_k_plus_plus"
)


def _mia_logs(by_split: Mapping[str, list[ItemScores]]) -> dict[str, Any]:
    """Each attack's per-item scores on forget and holdout, and its AUC (forget labelled 0, holdout 1)."""
    if not all(split in by_split for split in MIA_SPLITS):
        return {}
    logs = {}
    for name, attack in MIA_ATTACKS.items():
        scores = {split: [float(attack(s)) for s in by_split[split]] for split in MIA_SPLITS}
        entries = {
            split: _entry(by_split[split], [{"score": v} for v in scores[split]], float(np.mean(scores[split])))
            for split in MIA_SPLITS
        }
        auc = metrics.mia_auc(scores["forget"], scores["holdout"])
        logs[name] = {**entries, "auc": auc, "agg_value": auc}
    return logs


# ---------------------------------------------------------------------------------------------- ROUGE


def _stop_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def generate_greedy(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, stop_ids: list[int], max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuations of left-padded prompts in one `generate` call, each cut at its first stop token."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    with torch.inference_mode():
        out = model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_id,
            eos_token_id=stop_ids,
        )
    new = out[:, width:].cpu().tolist()
    return [next((row[:i] for i, token in enumerate(row) if token in stop_ids), row) for row in new]


def _generation_records(
    model: torch.nn.Module, tokenizer: Any, units: list[_Unit], settings: EvalSettings, tick: Callable[[], None]
) -> dict[int, dict[str, Any]]:
    """Per unit position: the ROUGE scores of its greedy generation, with input, ground truth and generation."""
    pad_id, stops = _pad_id(tokenizer), _stop_ids(model, tokenizer)
    limit = _max_length(model, tokenizer, settings) - settings.max_new_tokens
    prompts = {unit.position: encode(tokenizer, unit.item.question, None, settings.chat, limit) for unit in units}
    ordered = sorted(units, key=lambda unit: -len(prompts[unit.position].input_ids))
    records: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ordered), settings.generation_batch_size):
        batch = ordered[start : start + settings.generation_batch_size]
        ids = [prompts[unit.position].input_ids for unit in batch]
        generated = generate_greedy(model, ids, pad_id, stops, settings.max_new_tokens)
        for unit, prompt, new in zip(batch, ids, generated, strict=True):
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            records[unit.position] = metrics.rouge_scores(text, unit.item.answer) | {
                "input": tokenizer.decode(prompt, skip_special_tokens=True),
                "ground_truth": unit.item.answer,
                "generation": text,
            }
        tick()
    return records


def rouge_logs(
    model: torch.nn.Module, tokenizer: Any, units: list[_Unit], settings: EvalSettings, tick: Callable[[], None]
) -> dict[str, Any]:
    """Greedy generation from each question, scored against the answer (TOFU aggregates ROUGE-L recall)."""
    records = _generation_records(model, tokenizer, units, settings, tick)
    logs = {}
    for split in dict.fromkeys(unit.split for unit in units):
        chosen = [unit for unit in units if unit.split == split]
        values = [records[unit.position] for unit in chosen]
        agg = float(np.mean([value["rougeL_recall"] for value in values]))
        logs[_prefixed(split, "Q_A_ROUGE")] = {
            "agg_value": agg,
            "value_by_index": {str(unit.item.index): value for unit, value in zip(chosen, values, strict=True)},
        }
    return logs


# ---------------------------------------------------------------------------------------------- one model


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _max_length(model: torch.nn.Module, tokenizer: Any, settings: EvalSettings) -> int:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return settings.max_length or int(limit or tokenizer.model_max_length)


def _by_split(scores: list[ItemScores]) -> dict[str, list[ItemScores]]:
    return {
        split: [s for s in scores if s.split == split] for split in SPLIT_NAMES if any(s.split == split for s in scores)
    }


def teacher_forced_logs(scores: list[ItemScores]) -> dict[str, Any]:
    """Every registered per-split metric and the MIA attacks, as open-unlearning EVAL entries."""
    by_split = _by_split(scores)
    logs: dict[str, Any] = {}
    for split, items in by_split.items():
        for build in SPLIT_METRICS.values():
            logs |= build(split, items)
    return logs | _mia_logs(by_split)


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: SplitData,
    settings: EvalSettings,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """One model's EVAL entries (all but those needing other models or every split: see `derived_logs`)."""
    units = plan_units(dataset, tokenizer, settings.chat, _max_length(model, tokenizer, settings))
    device = next(model.parameters()).device
    scores = []
    for batch in plan_batches(units, settings.batch_size):
        _ensure_batch_fits(model, batch, device)
        scores += score_batch(model, batch, _pad_id(tokenizer), device)
        tick()
    logs = teacher_forced_logs(sorted(scores, key=lambda s: (SPLIT_NAMES.index(s.split), s.item.index)))
    if settings.rouge:
        logs |= rouge_logs(model, tokenizer, units, settings, tick)
    return dict(sorted(logs.items()))


def _ensure_batch_fits(model: torch.nn.Module, batch: list[_Unit], device: torch.device) -> None:
    """Refuse a batch whose forward pass would not fit: one layer's working set over every row of every item
    (answer, paraphrase, perturbed answers), plus the logits at every scored token."""
    shape = model_shape(model)
    itemsize = next(model.parameters()).element_size()
    rows = sum(len(unit.rows) for unit in batch)
    width = max(unit.width for unit in batch)
    scored = sum(len(row.input_ids) - row.score_from for unit in batch for row in unit.rows)
    working = activation_bytes(rows, width, shape.hidden, 1, itemsize, FORWARD_ACTIVATION_FACTOR)
    needed = working + scored * shape.vocab * itemsize
    ensure_fits(needed, device, f"evaluating {len(batch)} items ({rows} rows of up to {width} tokens) in one batch")


def _batch_count(dataset: SplitData, settings: EvalSettings) -> int:
    items = sum(len(split) for split in dataset.splits().values())
    count = math.ceil(items / settings.batch_size)
    return count + (math.ceil(items / settings.generation_batch_size) if settings.rouge else 0)


# ---------------------------------------------------------------------------------------------- derived metrics


@dataclass(frozen=True)
class OracleReference:
    """What forget quality and privleak compare against: the oracle's forget truth ratios and Min-K% AUC."""

    name: str
    truth_ratios: np.ndarray | None
    min_k_auc: float | None


def _logs_truth_ratios(logs: Mapping[str, Any]) -> np.ndarray | None:
    entry = logs.get("forget_truth_ratio")
    return None if entry is None else np.array([record["score"] for record in entry["value_by_index"].values()])


def _logs_reference(name: str, logs: Mapping[str, Any]) -> OracleReference:
    auc = logs.get("mia_min_k", {}).get("auc")
    return OracleReference(name, _logs_truth_ratios(logs), auc)


def folder_reference(folder: Path) -> OracleReference:
    """The oracle's numbers from a results folder (open-unlearning or legacy layout; its final evaluation)."""
    result = ingest([folder])
    runs = result.runs()
    if runs.empty:
        raise UserError(f"oracle folder {folder} holds no evaluation")
    final = runs.assign(order=runs["step"].astype("Float64").fillna(math.inf)).sort_values("order").iloc[-1]
    step = None if pd.isna(final["step"]) else int(final["step"])
    ratios = forget_truth_ratios(result.items, final["model"], step)
    summary = result.summary
    steps = summary["step"].isna() if step is None else summary["step"].eq(step).fillna(False)
    rows = summary[(summary["model"] == final["model"]) & steps & (summary["metric"] == "mia_min_k/auc")]
    auc = float(rows["value"].iloc[0]) if not rows.empty else None
    return OracleReference(f"{final['model']} ({folder})", ratios, auc)


def _forget_quality(logs: Mapping[str, Any], reference: OracleReference | None) -> float | None:
    ratios = _logs_truth_ratios(logs)
    if ratios is None or reference is None or reference.truth_ratios is None:
        return None
    if ratios.size != reference.truth_ratios.size:
        log.warning(
            "%d forget items vs the oracle's %d: forget quality not computed", ratios.size, reference.truth_ratios.size
        )
        return None
    return metrics.forget_quality(ratios, reference.truth_ratios)


def model_utility_of(logs: Mapping[str, Any]) -> float | None:
    """The harmonic mean of the TOFU model-utility components present (ROUGE only with generation; never ra_*)."""
    values = [logs[name]["agg_value"] for name in metrics.MODEL_UTILITY_COMPONENTS if name in logs]
    if not values:
        return None
    return 0.0 if min(values) <= 0 else float(stats.hmean(values))


def derived_logs(logs: Mapping[str, Any], reference: OracleReference | None) -> dict[str, Any]:
    """forget_quality (null without an oracle), model_utility, and privleak (vs the oracle's AUC, else 0.5)."""
    out: dict[str, Any] = {"model_utility": {"agg_value": model_utility_of(logs)}}
    if "forget_truth_ratio" in logs:
        out["forget_quality"] = {"agg_value": _forget_quality(logs, reference)}
    if "mia_min_k" in logs:
        known = reference.min_k_auc if reference else None
        auc = metrics.PRIVLEAK_DEFAULT_REFERENCE_AUC if known is None else known
        out["privleak"] = {"agg_value": metrics.privleak(logs["mia_min_k"]["auc"], auc)}
    return out


# ---------------------------------------------------------------------------------------------- result


@dataclass
class Evaluation:
    """One model (or checkpoint) evaluated: its EVAL entries exactly as written to `folder`."""

    model: str
    method: str
    step: int | None
    logs: dict[str, Any]
    folder: str | None = None
    cached: bool = False


def _flatten(logs: Mapping[str, Any]) -> Iterator[tuple[str, str, Any, Any]]:
    """(kind, metric, key, value) as core.evaluation.ingest reads an EVAL file: nested keys become `metric/key`
    names."""
    for name, entry in logs.items():
        yield from _flatten_entry(name, entry)


def _flatten_entry(path: str, entry: Any) -> Iterator[tuple[str, str, Any, Any]]:
    if not isinstance(entry, Mapping):
        yield "summary", path, None, entry
        return
    for key, value in entry.items():
        if key == "agg_value":
            yield "summary", path, None, value
        elif key == "value_by_index":
            for index, record in value.items():
                for field_name, element in record.items():
                    yield "item", path, (field_name, index), element
        else:
            yield from _flatten_entry(f"{path}/{key}", value)


def _item_rows(metric: str, key: tuple[str, str], value: Any) -> Iterator[tuple[str, str, str, int | None, Any]]:
    field_name, index = key
    options = enumerate(value) if isinstance(value, list) else [(None, value)]
    for option, element in options:
        yield metric, field_name, index, option, element


@dataclass
class EvalResult:
    """Every evaluation of one call, with the settings used and the oracle forget quality was measured against."""

    evaluations: list[Evaluation]
    settings: EvalSettings = field(default_factory=EvalSettings)
    oracle: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """The tidy table: model, method, step, split, metric, value (null metrics as NaN)."""
        rows = [
            (e.model, e.method, e.step, metrics.describe(name).split, name, math.nan if value is None else value)
            for e in self.evaluations
            for kind, name, _, value in _flatten(e.logs)
            if kind == "summary"
        ]
        frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"step": "Int64", "value": "float64"})
        return frame.sort_values(["model", "method", "step", "metric"], na_position="last").reset_index(drop=True)

    def items(self) -> pd.DataFrame:
        """Per-item numbers: model, method, step, metric, field, index, option (list position), value."""
        rows = [
            (e.model, e.method, e.step, *row)
            for e in self.evaluations
            for kind, name, key, value in _flatten(e.logs)
            if kind == "item"
            for row in _item_rows(name, key, value)
            if not isinstance(row[-1], str)
        ]
        return pd.DataFrame(rows, columns=ITEM_COLUMNS).astype({"step": "Int64", "option": "Int64", "value": "float64"})

    def texts(self) -> pd.DataFrame:
        """Per-item texts (ROUGE's input, ground truth and generation)."""
        rows = [
            (e.model, e.method, e.step, name, *key, value)
            for e in self.evaluations
            for kind, name, key, value in _flatten(e.logs)
            if kind == "item" and isinstance(value, str)
        ]
        return pd.DataFrame(rows, columns=TEXT_COLUMNS).astype({"step": "Int64"})

    def evaluation(self, model: str, step: int | None = None) -> Evaluation:
        for candidate in self.evaluations:
            if candidate.model == model and candidate.step == step:
                return candidate
        raise UserError(f"no evaluation of {model} at step {step}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "settings": dataclasses.asdict(self.settings),
            "oracle": self.oracle,
            "evaluations": [dataclasses.asdict(e) for e in self.evaluations],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        if data.get("format") != RESULT_FORMAT:
            raise UserError(f"not an evaluation result (format {data.get('format')!r}, expected {RESULT_FORMAT})")
        return cls([Evaluation(**e) for e in data["evaluations"]], EvalSettings(**data["settings"]), data.get("oracle"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------- cache


def _cache_path(key: str) -> Path:
    return cache_home() / "eval-cache" / f"{key}.json"


def _read_cache(key: str) -> dict[str, Any] | None:
    path = _cache_path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data["logs"] if data.get("key") == key else None


def _write_cache(key: str, candidate: _Candidate, logs: dict[str, Any]) -> None:
    atomic_write_text(_cache_path(key), json.dumps({"key": key, "model": candidate.label, "logs": logs}))


def _cache_key(candidate: _Candidate, data: str, settings: EvalSettings) -> str:
    return content_hash(CODE_VERSION, candidate.identity, data, settings.cache_fields())


# ---------------------------------------------------------------------------------------------- evaluate


def evaluation_folder(out_dir: Path, name: str, step: int | None) -> Path:
    """`<out>/<name>/` for a model, `<out>/<run>/checkpoint-<step>/evals/` for a run's checkpoint."""
    return Path(out_dir) / name if step is None else Path(out_dir) / name / f"checkpoint-{step}" / "evals"


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _oracle_target(oracle: ModelInput | Path | None, candidates: list[_Candidate]) -> tuple[str | None, Path | None]:
    """(name of an evaluated model, results folder); a spec not yet among the models is added to them."""
    if oracle is None:
        return None, None
    if isinstance(oracle, str) and any(c.name == oracle for c in candidates):
        return oracle, None
    if isinstance(oracle, str | Path) and Path(oracle).exists() and not _is_model_folder(Path(oracle)):
        return None, Path(oracle)
    if isinstance(oracle, Path):
        oracle = str(oracle)
    extra = _candidate(_as_eval_model(oracle))
    if not any(c.label == extra.label for c in candidates):
        candidates.append(extra)
    return extra.name, None


def _reference(
    name: str | None, folder: Path | None, evaluations: Mapping[str, tuple[_Candidate, dict]]
) -> OracleReference | None:
    if folder is not None:
        return folder_reference(folder)
    if name is None:
        return None
    runs = [(c, logs) for c, logs in evaluations.values() if c.name == name]
    candidate, logs = max(runs, key=lambda run: math.inf if run[0].step is None else run[0].step)
    return _logs_reference(candidate.label, logs)


class _Ticker:
    """Counts finished batches for the progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.label, self.progress = 0, total, "", progress

    def __call__(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, self.label)


def evaluate(
    models: Sequence[ModelInput],
    dataset: SplitData,
    *,
    oracle: ModelInput | Path | None = None,
    settings: EvalSettings | None = None,
    out_dir: Path | str | None = None,
    progress: Progress | None = None,
    cache: bool = True,
) -> EvalResult:
    """Evaluate every model on every split of `dataset`; write `<out>/…/TOFU_EVAL.json` + SUMMARY when `out_dir`.

    `oracle` names an evaluated model, or is a spec (evaluated too) or a results folder; without one forget
    quality is null and privleak uses open-unlearning's 0.5 stand-in AUC. Cached evaluations are reused.
    """
    settings = settings or EvalSettings()
    if not dataset.splits():
        raise UserError("the dataset has no QA split to evaluate on")
    candidates = _candidates(models)
    oracle_name, oracle_folder = _oracle_target(oracle, candidates)
    data = dataset_hash(dataset)
    keys = {c.label: _cache_key(c, data, settings) for c in candidates}
    found = {c.label: logs for c in candidates if cache and (logs := _read_cache(keys[c.label])) is not None}
    ticker = _Ticker(sum(_batch_count(dataset, settings) for c in candidates if c.label not in found), progress)
    loader = _Loader()
    raw: dict[str, tuple[_Candidate, dict[str, Any]]] = {}
    for candidate in sorted(candidates, key=lambda c: c.group):
        if candidate.label in found:
            log.info("%s: cached evaluation reused", candidate.label)
            raw[candidate.label] = (candidate, found[candidate.label])
            continue
        ticker.label = candidate.label
        with loader.open(candidate) as (model, tokenizer):
            logs = evaluate_model(model, tokenizer, dataset, settings, ticker)
        raw[candidate.label] = (candidate, logs)
        if cache:
            _write_cache(keys[candidate.label], candidate, logs)
    loader.close()
    reference = _reference(oracle_name, oracle_folder, raw)
    evaluations = [_finish(raw[c.label], reference, c.label in found, out_dir) for c in candidates]
    return EvalResult(evaluations, settings, reference.name if reference else None)


def _finish(
    raw: tuple[_Candidate, dict[str, Any]], reference: OracleReference | None, cached: bool, out_dir: Path | str | None
) -> Evaluation:
    candidate, logs = raw
    logs = dict(sorted((logs | derived_logs(logs, reference)).items()))
    folder = None
    if out_dir is not None:
        folder = evaluation_folder(Path(out_dir), candidate.name, candidate.step)
        write_open_unlearning(logs, folder, BENCHMARK)
    return Evaluation(candidate.name, candidate.method, candidate.step, logs, str(folder) if folder else None, cached)


# ---------------------------------------------------------------------------------------------- runs


def _run_method(checkpoint: Path, run_name: str) -> str:
    try:
        return infer_method(str(read_manifest(checkpoint)["method"]))
    except (OSError, KeyError, json.JSONDecodeError):
        return infer_method(run_name)


def run_models(run_dir: Path | str, **spec_options: Any) -> list[EvalModel]:
    """Every complete checkpoint of an unlearning run (core.unlearn's layout), named after the run, by step."""
    run_dir = Path(run_dir).resolve()
    checkpoints = checkpoint_dirs(run_dir)
    if not checkpoints:
        raise UserError(f"{run_dir}: no complete checkpoint-<step> folder (is it an unlearning run's --out folder?)")
    return [
        EvalModel(
            spec=ModelSpec.parse(str(path), **spec_options),
            name=run_dir.name,
            method=_run_method(path, run_dir.name),
            step=step,
        )
        for step, path in checkpoints.items()
    ]


def evaluate_run(
    run_dir: Path | str,
    dataset: SplitData,
    *,
    oracle: ModelInput | Path | None = None,
    settings: EvalSettings | None = None,
    out_dir: Path | str | None = None,
    progress: Progress | None = None,
    cache: bool = True,
    **spec_options: Any,
) -> EvalResult:
    """Evaluate every checkpoint of a run; results go to `<run>/checkpoint-<step>/evals/` unless `out_dir` is given."""
    run_dir = Path(run_dir).resolve()
    return evaluate(
        run_models(run_dir, **spec_options),
        dataset,
        oracle=oracle,
        settings=settings,
        out_dir=run_dir.parent if out_dir is None else out_dir,
        progress=progress,
        cache=cache,
    )


# ---------------------------------------------------------------------------------------------- demo

# TOFU too evaluates on subsets (retain: 400 of 3,600; holdout as large as forget). The demo evaluates 21 models
# (base, target, oracle, 3 runs × 6 checkpoints) inside its 10-minute budget on a 2-core CPU, so it keeps what the
# tradeoff needs: every forget row (probability, truth ratio → forget quality, MIA), two retain people (12 items:
# model utility), the holdout's answers only (the MIA non-members: no paraphrase or perturbed rows to pay for), and
# a third of the world facts.
DEMO_RETAIN_ITEMS = 12
DEMO_WORLD_FACTS = 12


def demo_models(experiment: DemoExperiment) -> list[EvalModel]:
    """The demo's base, its fine-tuned references (target, oracle) and every checkpoint of each unlearning run."""
    template = ModelSpec(str(experiment.base_dir))
    models = [EvalModel(spec=experiment.spec(BASE, template), name=BASE)]
    for stage in experiment.recipe.stages:
        if stage.learn:
            models.append(EvalModel(spec=experiment.spec(stage.name, template), name=stage.name))
            continue
        models += [
            EvalModel(spec=experiment.spec(f"{stage.name}@{step}", template), name=stage.name, step=step)
            for step in experiment.checkpoints(stage.name)
        ]
    return models


def demo_eval_data(experiment: DemoExperiment) -> SplitData:
    """The experiment's splits cut to what the demo's tradeoff needs (see DEMO_RETAIN_ITEMS)."""
    data = experiment.data
    retain = dataclasses.replace(data.retain, items=data.retain.items[:DEMO_RETAIN_ITEMS])
    answers_only = [
        dataclasses.replace(item, paraphrased_answer=None, perturbed_answer=[])
        for item in data.holdout.items[: len(data.forget)]
    ]
    holdout = dataclasses.replace(data.holdout, items=answers_only)
    split = {"retain": retain, "holdout": holdout}
    if data.world_facts is not None:
        split["world_facts"] = dataclasses.replace(data.world_facts, items=data.world_facts.items[:DEMO_WORLD_FACTS])
    return dataclasses.replace(data, **split)


@register_evaluation
def tofu(experiment: DemoExperiment, out_dir: Path, progress: Callable[[float, str], None]) -> None:
    """The demo pipeline's evaluation: every demo model against the oracle, written under `out_dir` (no ROUGE)."""

    def report(done: int, total: int, label: str) -> None:
        progress(done / total, f"evaluating {label} ({done}/{total} batches)")

    settings = EvalSettings(chat=experiment.recipe.chat)
    evaluate(demo_models(experiment), demo_eval_data(experiment), oracle=ORACLE, settings=settings,
             out_dir=out_dir, progress=report)  # fmt: skip


# ---------------------------------------------------------------------------------------------- inputs by name


def default_out_dir() -> Path:
    """Where the CLI writes results by default: the cache home's evals/, which the dashboard's Tradeoffs page reads."""
    return cache_home() / "evals"


def load_eval_data(data: str) -> SplitData:
    """`demo` for the demo splits, else a split folder (forget.jsonl, retain.jsonl, holdout.jsonl, …)."""
    return load_demo_splits() if data == "demo" else load_split_folder(data)


def oracle_is_spec(oracle: str) -> bool:
    """A model folder or a `demo:`-style spec (loaded with the caller's dtype/device), not a name or results folder."""
    path = Path(oracle)
    return _is_model_folder(path) if path.exists() else ":" in oracle
