"""Evaluate models and checkpoints on forget / retain / holdout / world-facts splits → EvalResult + result files.

Teacher-forced metrics share one forward pass per model per batch: an item's answer, paraphrased and perturbed
answers are rows of the same batch, and the logits at the answer positions give probability, truth ratio, exact
memorisation, extraction strength and the MIA scores (LOSS, ZLib, Min-K%, Min-K%++). ROUGE needs greedy generation
and is optional. Each model's numbers are written in open-unlearning's TOFU_EVAL/TOFU_SUMMARY layout (read back by
core.evaluation.ingest) and cached by content hash of the model files, the dataset and the settings."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from core.common.cache import cache_home
from core.common.errors import UserError
from core.common.limits import FORWARD_ACTIVATION_FACTOR, activation_bytes, ensure_fits, model_shape
from core.data.qa import SPLIT_NAMES, SplitData, load_demo_splits, load_split_folder
from core.evaluation.cache import cache_key, read_cache, write_cache
from core.evaluation.candidates import Candidate, as_eval_model, dataset_hash, resolve_candidates, to_candidate
from core.evaluation.derived import OracleReference, derived_logs, folder_reference, logs_reference
from core.evaluation.loading import ModelLoader
from core.evaluation.mia import MIA_ATTACKS, mia_logs, reference_logs
from core.evaluation.mia_models import gradnorm_logs, reference_losses
from core.evaluation.muse import muse_logs
from core.evaluation.result import EvalResult, Evaluation
from core.evaluation.rouge import rouge_logs
from core.evaluation.run_names import infer_method
from core.evaluation.scores import ItemScores, Unit, context_length, pad_token_id, plan_batches, plan_units, score_batch
from core.evaluation.settings import MIA_SPLITS, EvalModel, EvalSettings, ModelInput, Progress
from core.evaluation.split_metrics import SPLIT_METRICS, split_metric
from core.evaluation.writer import write_open_unlearning
from core.models.spec import ModelSpec
from core.scoring.templates import Template
from core.unlearn.checkpoints import checkpoint_dirs, read_manifest
from core.unlearn.demo import DemoExperiment, register_evaluation
from core.unlearn.recipes import BASE, ORACLE

# The evaluation API: what to evaluate and how, the entry points, their result, and the registries a new per-split
# metric or MIA attack joins (each defined in its own module of this package).
__all__ = [
    "MIA_ATTACKS",
    "SPLIT_METRICS",
    "EvalModel",
    "EvalResult",
    "EvalSettings",
    "Evaluation",
    "evaluate",
    "evaluate_model",
    "evaluate_run",
    "run_models",
    "split_metric",
    "tofu",
]

log = logging.getLogger(__name__)

BENCHMARK = "TOFU"


# ---------------------------------------------------------------------------------------------- one model


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
    return logs | mia_logs(by_split)


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: SplitData,
    settings: EvalSettings,
    tick: Callable[[], None] = lambda: None,
    template: Template | None = None,
) -> dict[str, Any]:
    """One model's EVAL entries (all but those needing other models or every split: see `derived_logs`).
    `template` defaults to `settings.template_for(tokenizer)`."""
    template = template or settings.template_for(tokenizer)
    limit = context_length(model, tokenizer, settings)
    units = plan_units(dataset, tokenizer, template, limit, settings.score_end)
    device = next(model.parameters()).device
    scores = []
    for batch in plan_batches(units, settings.batch_size):
        _ensure_batch_fits(model, batch, device)
        scores += score_batch(model, batch, pad_token_id(tokenizer), device, settings, tokenizer.eos_token_id)
        tick()
    for s in scores:  # ZLib compresses the scored tokens' text, as open-unlearning decodes it
        if s.split in MIA_SPLITS:
            s.answer.text = tokenizer.decode(s.answer.labels.tolist(), skip_special_tokens=True)
    logs = teacher_forced_logs(sorted(scores, key=lambda s: (SPLIT_NAMES.index(s.split), s.item.index)))
    if settings.rouge:
        chosen = [unit for unit in units if settings.rouge_splits is None or unit.split in settings.rouge_splits]
        logs |= rouge_logs(model, tokenizer, chosen, settings, tick, template)
    if settings.gradnorm:
        logs |= gradnorm_logs(model, tokenizer, dataset, template, settings, limit)
    if settings.rouge and dataset.muse:
        logs |= muse_logs(model, tokenizer, dataset.muse, template, settings)
    return dict(sorted(logs.items()))


def _ensure_batch_fits(model: torch.nn.Module, batch: list[Unit], device: torch.device) -> None:
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


def batch_count(dataset: SplitData, settings: EvalSettings) -> int:
    items = sum(len(split) for split in dataset.splits().values())
    wanted = settings.rouge_splits
    generated = sum(len(qa) for name, qa in dataset.splits().items() if wanted is None or name in wanted)
    count = math.ceil(items / settings.batch_size)
    return count + (math.ceil(generated / settings.generation_batch_size) if settings.rouge else 0)


# ---------------------------------------------------------------------------------------------- evaluate


def evaluation_folder(out_dir: Path, name: str, step: int | None) -> Path:
    """`<out>/<name>/` for a model, `<out>/<run>/checkpoint-<step>/evals/` for a run's checkpoint."""
    return Path(out_dir) / name if step is None else Path(out_dir) / name / f"checkpoint-{step}" / "evals"


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def oracle_target(oracle: ModelInput | Path | None, candidates: list[Candidate]) -> tuple[str | None, Path | None]:
    """(name of an evaluated model, results folder); a spec not yet among the models is added to them."""
    if oracle is None:
        return None, None
    if isinstance(oracle, str) and any(c.name == oracle for c in candidates):
        return oracle, None
    if isinstance(oracle, str | Path) and Path(oracle).exists() and not _is_model_folder(Path(oracle)):
        return None, Path(oracle)
    if isinstance(oracle, Path):
        oracle = str(oracle)
    extra = to_candidate(as_eval_model(oracle))
    if not any(c.label == extra.label for c in candidates):
        candidates.append(extra)
    return extra.name, None


def oracle_reference(
    name: str | None, folder: Path | None, evaluations: Mapping[str, tuple[Candidate, dict]]
) -> OracleReference | None:
    if folder is not None:
        return folder_reference(folder)
    if name is None:
        return None
    runs = [(c, logs) for c, logs in evaluations.values() if c.name == name]
    candidate, logs = max(runs, key=lambda run: math.inf if run[0].step is None else run[0].step)
    return logs_reference(candidate.label, logs)


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
    candidates = resolve_candidates(models)
    oracle_name, oracle_folder = oracle_target(oracle, candidates)
    data = dataset_hash(dataset)
    keys = {c.label: cache_key(c, data, settings) for c in candidates}
    found = {c.label: logs for c in candidates if cache and (logs := read_cache(keys[c.label])) is not None}
    ticker = _Ticker(sum(batch_count(dataset, settings) for c in candidates if c.label not in found), progress)
    loader = ModelLoader()
    references = ReferenceLosses(settings, dataset)
    raw: dict[str, tuple[Candidate, dict[str, Any]]] = {}
    for candidate in sorted(candidates, key=lambda c: c.group):
        if candidate.label in found:
            log.info("%s: cached evaluation reused", candidate.label)
            raw[candidate.label] = (candidate, found[candidate.label])
            continue
        ticker.label = candidate.label
        logs = evaluate_candidate(candidate, loader, dataset, settings, ticker, references)
        raw[candidate.label] = (candidate, logs)
        if cache:
            write_cache(keys[candidate.label], candidate, logs)
    loader.close()
    reference = oracle_reference(oracle_name, oracle_folder, raw)
    evaluations = [finish_evaluation(raw[c.label], reference, c.label in found, out_dir) for c in candidates]
    return EvalResult(evaluations, settings, reference.name if reference else None)


def evaluate_candidate(
    candidate: Candidate,
    loader: ModelLoader,
    dataset: SplitData,
    settings: EvalSettings,
    tick: Callable[[], None] = lambda: None,
    references: ReferenceLosses | None = None,
) -> dict[str, Any]:
    """One model's EVAL entries before the derived ones (`finish_evaluation` adds them): loaded through `loader`,
    scored under its template (the settings' or its default) and, with `settings.reference`, mia_reference against
    the reference model's losses. `evaluate` and the sweep's tasks (core.sweep.evaluate) both evaluate a model here."""
    with loader.open(candidate) as (model, tokenizer):
        template = settings.template_for(tokenizer, _spec_text(candidate))
        logs = evaluate_model(model, tokenizer, dataset, settings, tick, template)
        if settings.reference is not None:
            logs |= reference_logs(logs, (references or ReferenceLosses(settings, dataset)).losses(template))
    return logs


class ReferenceLosses:
    """The reference model's per-item losses for mia_reference, scored once per template on first use."""

    def __init__(self, settings: EvalSettings, dataset: SplitData) -> None:
        self.settings, self.dataset, self.found = settings, dataset, {}

    def losses(self, template: Template) -> dict[str, dict[str, float]]:
        if template not in self.found:
            candidate = to_candidate(as_eval_model(str(self.settings.reference)))
            loader = ModelLoader()
            with loader.open(candidate) as (model, tokenizer):
                self.found[template] = reference_losses(model, tokenizer, self.dataset, template, self.settings)
            loader.close()
        return self.found[template]


def _spec_text(candidate: Candidate) -> str | None:
    spec = candidate.source.spec
    return None if spec is None else spec.adapter or spec.source


def finish_evaluation(
    raw: tuple[Candidate, dict[str, Any]], reference: OracleReference | None, cached: bool, out_dir: Path | str | None
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
    run_dir: Path | str, dataset: SplitData, *, out_dir: Path | str | None = None, **options: Any
) -> EvalResult:
    """Evaluate every checkpoint of a run; results go to `<run>/checkpoint-<step>/evals/` unless `out_dir` is given.

    `options` are `evaluate`'s (oracle, settings, progress, cache); the others go to each checkpoint's ModelSpec."""
    run_dir = Path(run_dir).resolve()
    spec_options = {name: value for name, value in options.items() if name not in _EVALUATE_OPTIONS}
    evaluate_options = {name: value for name, value in options.items() if name in _EVALUATE_OPTIONS}
    out_dir = run_dir.parent if out_dir is None else out_dir
    return evaluate(run_models(run_dir, **spec_options), dataset, out_dir=out_dir, **evaluate_options)


_EVALUATE_OPTIONS = ("oracle", "settings", "progress", "cache")


# ---------------------------------------------------------------------------------------------- demo


# TOFU too evaluates on subsets (retain: 400 of 3,600; holdout as large as forget). The demo evaluates 21 models
# (base, target, oracle, 3 runs × 6 checkpoints) inside its 10-minute budget on a 2-core CPU, so it keeps what the
# tradeoff needs: every forget row (probability, truth ratio → forget quality, MIA), two retain people (12 items),
# the holdout's answers only (the MIA non-members: no paraphrase or perturbed rows to pay for), and 12 real-authors
# and 12 world-facts items; ROUGE generates (DEMO_ROUGE_TOKENS greedy tokens) on the utility splits only, so all
# nine model-utility components are there and `model_utility` is open-unlearning's number.
DEMO_RETAIN_ITEMS = 12
DEMO_WORLD_FACTS = 12
DEMO_REAL_AUTHORS = 12
DEMO_ROUGE_TOKENS = 24  # the demo's answers are at most 26 tokens; ROUGE recall reads what the reference shares
DEMO_ROUGE_SPLITS = ("retain", "real_authors", "world_facts")


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
    if data.real_authors is not None:
        authors = data.real_authors.items[:DEMO_REAL_AUTHORS]
        split["real_authors"] = dataclasses.replace(data.real_authors, items=authors)
    if data.world_facts is not None:
        split["world_facts"] = dataclasses.replace(data.world_facts, items=data.world_facts.items[:DEMO_WORLD_FACTS])
    return dataclasses.replace(data, **split)


@register_evaluation
def tofu(experiment: DemoExperiment, out_dir: Path, progress: Callable[[float, str], None]) -> None:
    """The demo pipeline's evaluation: every demo model against the oracle, written under `out_dir` (ROUGE on the
    utility splits)."""

    def report(done: int, total: int, label: str) -> None:
        progress(done / total, f"evaluating {label} ({done}/{total} batches)")

    settings = EvalSettings(
        template="chat" if experiment.recipe.chat else "plain",
        rouge=True,
        rouge_splits=DEMO_ROUGE_SPLITS,
        max_new_tokens=DEMO_ROUGE_TOKENS,
        generation_batch_size=DEMO_RETAIN_ITEMS,
    )
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
