"""The demo experiment: the embedded SmolLM2 taught invented people (target), taught only the retained ones
(oracle), and unlearned from the target by several methods, every model a LoRA adapter on one shared backbone.

Each stage is a training run cached under `cache_home()/demo/<recipe>/` in a folder named by the hash of its
inputs (data, recipe, code version, base weights), so it is rebuilt only when they change; an interrupted stage
resumes from its latest checkpoint. `status.json` there tells the dashboard how far a build has got.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.common import Registry
from core.common.cache import (
    COMPLETE_MARKER,
    atomic_directory,
    atomic_write_json,
    cache_home,
    content_hash,
    file_lock,
    is_complete,
)
from core.common.errors import UserError
from core.common.paths import PROJECT_ROOT
from core.data.qa import DEMO_DIR, SplitData, load_demo_splits
from core.models.embedded import GGUF_SHA256, ensure_embedded_model
from core.models.spec import DEMO_PREFIX, ModelSpec
from core.unlearn.checkpoints import CODE_VERSION, checkpoint_dirs
from core.unlearn.methods import get_method
from core.unlearn.recipes import BASE, DEFAULT_UNLEARNED, RECIPES, TARGET, UNLEARNED, Recipe, Stage
from core.unlearn.trainee import LoraTrainee, attach_adapter, lora_config
from core.unlearn.trainer import TrainConfig, TrainingData, train

log = logging.getLogger(__name__)

QUICK_ENV = "ULENS_DEMO_QUICK"  # set to 1: demo:NAME and the dashboard use the reduced (quick) experiment
STATUS_FILE = "status.json"
BACKGROUND_NICENESS = 10  # `core demo --background` builds at this POSIX niceness (about 1/10 of a normal CPU weight)
_NAME = re.compile(r"^(?P<stage>[a-z_]+)(?:@(?P<step>\d+))?$")
_BUILT: dict[tuple, tuple[list[str], bool]] = {}  # DemoExperiment._built, keyed by the runs folder's mtime
_BUILT_LOCK = threading.Lock()  # Streamlit sessions are threads

DemoProgress = Callable[[dict[str, Any]], None]  # receives each status update (the status.json content)


def default_recipe() -> Recipe:
    return RECIPES["quick" if os.environ.get(QUICK_ENV, "") not in ("", "0") else "full"]


# Stage 4 of the pipeline: evaluations of the built experiment. core/evaluation/evaluate.py registers one here with
# `@register_evaluation`; each runs after all training stages, with the experiment and its own output folder
# (cached like a stage: rerun only when the experiment's inputs change). core.evaluation.evaluate imports this
# module, so the registry names it as a provider: it is imported on the registry's first read, whatever was
# imported before.
DemoEvaluation = Callable[["DemoExperiment", Path, Callable[[float, str], None]], None]
EVALUATION_PROVIDERS = ("core.evaluation.evaluate",)
DEMO_EVALUATIONS: Registry[DemoEvaluation] = Registry("demo evaluation", providers=EVALUATION_PROVIDERS)


def register_evaluation(fn: DemoEvaluation) -> DemoEvaluation:
    """Add a demo evaluation (by its function name) to the registry this module reads at build time."""
    return DEMO_EVALUATIONS.register(fn)


class DemoExperiment:
    """The demo's stages for one recipe: where each lives in the cache, whether it is built, and building it."""

    def __init__(
        self,
        recipe: Recipe | None = None,
        data_dir: Path = DEMO_DIR,
        base_dir: Path | None = None,
        root: Path | None = None,
    ) -> None:
        self.recipe = recipe or default_recipe()
        self.data_dir = data_dir
        self._base_dir = base_dir
        self._embedded = base_dir is None  # keyed by the GGUF hash even after base_dir is resolved lazily
        self.root = root or cache_home() / "demo" / self.recipe.name
        self._data: SplitData | None = None
        self._host: Any = None  # the one backbone (a PeftModel once adapters are attached), loaded on first use
        self._tokenizer: Any = None
        self._status: dict[str, Any] = {}
        self._progress: DemoProgress | None = None
        self._last_write = 0.0

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            self._base_dir = ensure_embedded_model()
        return self._base_dir

    @property
    def data(self) -> SplitData:
        if self._data is None:
            data = load_demo_splits(self.data_dir)
            data.forget.items = data.forget.items[: self.recipe.forget_items]
            data.retain.items = data.retain.items[: self.recipe.retain_items]
            self._data = data
        return self._data

    def stage(self, name: str) -> Stage:
        for stage in self.recipe.stages:
            if stage.name == name:
                return stage
        raise UserError(f"the demo has no model {name!r}; choose one of {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [BASE, *(s.name for s in self.recipe.stages), UNLEARNED]

    def training_data(self, stage: Stage) -> TrainingData:
        if stage.learn:
            return TrainingData(forget=[item for split in stage.learn for item in getattr(self.data, split)])
        return TrainingData(self.data.forget.items, self.data.retain.items, self.data.refusals)

    def key(self, name: str) -> str:
        """Hash of everything a stage's result depends on (its own inputs and, through them, its start's)."""
        stage = self.stage(name)
        recipe = {k: v for k, v in dataclasses.asdict(self.recipe).items() if k not in {"name", "stages"}}
        start = self.key(stage.start) if stage.start != BASE else self._base_key()
        return content_hash(
            CODE_VERSION, dataclasses.asdict(stage), recipe, start, self.training_data(stage).content_hash()
        )

    def _base_key(self) -> str:
        """The embedded model is named by its GGUF's sha256; another base folder (tests) by its path."""
        return GGUF_SHA256 if self._embedded else str(self._base_dir)

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / f"{name}-{self.key(name)}"

    def is_built(self, name: str) -> bool:
        return name == BASE or is_complete(self.run_dir(self.stage(name).name))

    def checkpoints(self, name: str) -> dict[int, Path]:
        return checkpoint_dirs(self.run_dir(name)) if self.is_built(name) else {}

    def available(self) -> list[str]:
        """Model names that can be opened now without building anything."""
        names = [BASE]
        for stage in self.recipe.stages:
            if self.is_built(stage.name):
                names.append(stage.name)
                if stage.start == TARGET:
                    names.extend(f"{stage.name}@{step}" for step in self.checkpoints(stage.name))
        if self.is_built(DEFAULT_UNLEARNED):
            names.append(UNLEARNED)
        return names

    def spec(self, name: str, template: ModelSpec, build: bool = False) -> ModelSpec:
        """The spec of demo model `name` (base, target, oracle, METHOD, METHOD@STEP, unlearned). A model that is not
        built yet is a UserError saying how to build it, unless `build` asks to train it first (minutes)."""
        match = self._match(name)
        stage_name = DEFAULT_UNLEARNED if match["stage"] == UNLEARNED else match["stage"]
        if stage_name == BASE:
            return replace(template, source=str(self.base_dir), adapter=None, gguf_file=None, revision=None)
        self.stage(stage_name)
        if not self.is_built(stage_name):
            if not build:
                raise UserError(
                    f"demo model {name} is not built yet: build it with `python -m core demo` (add --quick where "
                    f"{QUICK_ENV}=1), or load it from the dashboard, whose Load pair builds it first"
                )
            self.build([stage_name])
        checkpoints = self.checkpoints(stage_name)
        step = int(match["step"]) if match["step"] else max(checkpoints)
        if step not in checkpoints:
            raise UserError(
                f"demo run {stage_name} has no checkpoint at step {step}; it has {', '.join(map(str, checkpoints))}"
            )
        return replace(
            template, source=str(self.base_dir), adapter=str(checkpoints[step]), gguf_file=None, revision=None
        )

    def _match(self, name: str) -> re.Match[str]:
        match = _NAME.match(name.strip().lower())
        if not match:
            raise UserError(
                f"bad demo model name {name!r}; use NAME or NAME@STEP with NAME one of {', '.join(self.names())}"
            )
        return match

    def stages_to_build(self, names: Iterable[str]) -> list[str]:
        """The training stages that demo models `names` (as for `spec`) need and that are not built yet, in build
        order; a name that is not the demo's is left to `spec`, which reports it."""
        wanted = set()
        for name in names:
            match = _NAME.match(name.strip().lower())
            if match:
                wanted.add(DEFAULT_UNLEARNED if match["stage"] == UNLEARNED else match["stage"])
        return [s.name for s in self.recipe.stages if s.name in wanted and not self.is_built(s.name)]

    def build(
        self, names: list[str] | None = None, progress: DemoProgress | None = None, evaluate: bool = True
    ) -> None:
        """Build the named stages (and what they start from), or everything; then run the evaluations."""
        wanted = self._with_dependencies(names or [s.name for s in self.recipe.stages])
        self._progress = progress
        evaluating = evaluate and names is None
        if evaluating and not DEMO_EVALUATIONS.names():  # refused before any training, not skipped after it
            raise RuntimeError(f"no demo evaluation is registered (by {', '.join(EVALUATION_PROVIDERS)})")
        train_share = 0.8 if evaluating else 1.0  # the evaluations report the rest, so progress never goes back
        total = (sum(_cost(s) for s in wanted) or 1) / train_share
        done = 0.0
        try:
            for stage in wanted:
                if not self.is_built(stage.name):
                    self._build_stage(stage, done, total)
                done += _cost(stage)
            if evaluating:
                self._evaluate(train_share)
        except KeyboardInterrupt:
            self._report("interrupted", self._status.get("stage", ""), done / total, "interrupted; rerun to resume")
            raise
        except Exception as exc:
            self._report("failed", self._status.get("stage", ""), done / total, f"{type(exc).__name__}: {exc}")
            raise
        self._report("done", "", 1.0, f"built {', '.join(s.name for s in wanted)}")

    def _with_dependencies(self, names: list[str]) -> list[Stage]:
        needed = set()
        for name in names:
            stage = self.stage(name)
            needed.add(stage.name)
            if stage.start != BASE:
                needed.add(stage.start)
        return [s for s in self.recipe.stages if s.name in needed]

    def _build_stage(self, stage: Stage, done: float, total: float) -> None:
        out = self.run_dir(stage.name)
        with self._lock(stage.name):
            if is_complete(out):  # another process built it while we waited
                return
            self._report("building", stage.name, done / total, f"training {stage.name} ({stage.steps} steps)")
            method = get_method(stage.method).from_options(dict(stage.options))
            config = TrainConfig(
                steps=stage.steps,
                lr=stage.lr,
                batch_size=self.recipe.batch_size,
                save_every=stage.save_every,
                seed=self.recipe.seed,
                chat=self.recipe.chat,
            )

            def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
                fraction = (done + _cost(stage) * step / steps) / total
                self._report(
                    "building",
                    stage.name,
                    fraction,
                    f"{stage.name}: step {step}/{steps}, loss {terms.get('loss', float('nan')):.3f}",
                )

            trainee = self._trainee(stage)
            train(trainee, self._tokenizer, method, self.training_data(stage), config, out=out, progress=on_step)
            atomic_write_json(out / COMPLETE_MARKER, {"stage": stage.name, "key": self.key(stage.name)})

    def _trainee(self, stage: Stage) -> LoraTrainee:
        """A LoRA trainee on the shared backbone: a new adapter, or a copy of the target's."""
        import torch

        from core.models.loading import load_backbone, load_tokenizer, resolve_device

        if self._host is None:
            spec = ModelSpec(str(self.base_dir), dtype="float32")
            self._tokenizer = load_tokenizer(spec)
            self._host = load_backbone(spec, resolve_device("auto"), torch.float32)
        torch.manual_seed(self.recipe.seed)
        if stage.start == BASE:
            config = lora_config(self.recipe.lora_rank, self.recipe.lora_alpha, "all-linear")
            self._host = attach_adapter(self._host, stage.name, config, trainable=True)
            return LoraTrainee(self._host, stage.name, None, str(self.base_dir))
        target = self.checkpoints(TARGET)[max(self.checkpoints(TARGET))]
        if TARGET not in getattr(self._host, "peft_config", {}):
            self._host = attach_adapter(self._host, TARGET, target, trainable=False)
        self._host = attach_adapter(self._host, stage.name, target, trainable=True)
        return LoraTrainee(self._host, stage.name, TARGET, str(self.base_dir))

    def _evaluate(self, start: float) -> None:
        key = content_hash(*(self.key(s.name) for s in self.recipe.stages))
        share = (1.0 - start) / len(DEMO_EVALUATIONS)
        for i, (name, evaluation) in enumerate(DEMO_EVALUATIONS.items()):
            target = self.root / "evaluations" / f"{name}-{key}"
            if is_complete(target):
                continue
            offset = start + i * share

            def report(fraction: float, message: str, n: str = name, offset: float = offset) -> None:
                self._report("building", f"evaluate:{n}", offset + share * min(1.0, max(0.0, fraction)), message)

            with self._lock(f"evaluate-{name}"):
                if is_complete(target):  # another process evaluated it while we waited
                    continue
                with atomic_directory(target, {"evaluation": name}) as scratch:
                    evaluation(self, scratch, report)

    def _lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """One builder per stage across processes (the dashboard and the CLI may both ask for it)."""
        return file_lock(self.root / f".{name}.lock")

    def _report(self, state: str, stage: str, fraction: float, message: str) -> None:
        """Log, call the progress callback, and write status.json (throttled to one write a second while training)."""
        now = time.time()
        changed = state != self._status.get("state") or stage != self._status.get("stage")
        self._status = {
            "state": state,
            "stage": stage,
            "fraction": round(min(1.0, fraction), 4),
            "message": message,
            "recipe": self.recipe.name,
            "pid": os.getpid(),
            "updated": now,
            "models": self.available() if changed or state != "building" else self._status.get("models"),
        }
        if self._progress:
            self._progress(dict(self._status))
        if changed or state != "building" or now - self._last_write >= 1.0:
            log.info("demo %s: %s (%.0f%%)", state, message, 100 * fraction)
            atomic_write_json(self.root / STATUS_FILE, self._status)
            self._last_write = now

    def status(self) -> dict[str, Any]:
        """The last status written (by any process), corrected by what is on disk now."""
        path = self.root / STATUS_FILE
        status: dict[str, Any] = {"state": "not built", "stage": "", "fraction": 0.0, "message": ""}
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                status = {**status, **json.loads(path.read_text(encoding="utf-8"))}
        if status["state"] == "building" and not _alive(int(status.get("pid", 0))):
            status["state"], status["message"] = "interrupted", "the build stopped; run `python -m core demo`"
        status["models"], status["complete"] = self._built()
        status["recipe"] = self.recipe.name
        return status

    def _built(self) -> tuple[list[str], bool]:
        """(models that open now, whether every stage is built), re-read only when the runs folder changes: finding
        them hashes the training data, and the sidebar asks on every interaction of every page."""
        try:
            stamp = (self.root / "runs").stat().st_mtime_ns  # a stage folder swapped in or removed changes it
        except FileNotFoundError:
            stamp = None
        key = (str(self.root), self.recipe, str(self.data_dir), str(self._base_dir), stamp)
        with _BUILT_LOCK:
            if key not in _BUILT:
                _BUILT.clear()  # only the newest state of each experiment is ever asked for again
                _BUILT[key] = (self.available(), all(self.is_built(s.name) for s in self.recipe.stages))
            models, complete = _BUILT[key]
        return list(models), complete


def _cost(stage: Stage) -> float:
    """Relative time of a stage: an unlearning step runs forget and retain batches, about twice a plain step."""
    return stage.steps * (1.0 if stage.learn else 2.0)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_demo_spec(name: str, template: ModelSpec) -> ModelSpec:
    """`demo:NAME` → base + adapter spec, keeping the template's dtype and device. Never trains: a model that is
    not built yet is a UserError saying how to build it (`build_demo_models` is the explicit call)."""
    return DemoExperiment().spec(name, template)


def demo_model_names(specs: Iterable[ModelSpec | str]) -> list[str]:
    """NAME of every `demo:NAME` among model specs (or spec texts, as ModelSpec.parse reads them)."""
    sources = [(ModelSpec.parse(spec) if isinstance(spec, str) else spec).source for spec in specs]
    return [source[len(DEMO_PREFIX) :] for source in sources if source.startswith(DEMO_PREFIX)]


def build_demo_models(
    specs: Iterable[ModelSpec | str], progress: DemoProgress | None = None, experiment: DemoExperiment | None = None
) -> list[str]:
    """Build the training stages that the `demo:NAME` specs among `specs` need and that are missing (target ≈ 1–2
    min on a 2-core CPU), reporting progress and writing status.json; return the stages built. The explicit step
    before loading demo models, since resolving a demo spec never trains."""
    experiment = experiment or DemoExperiment()
    needed = experiment.stages_to_build(demo_model_names(specs))
    if needed:
        experiment.build(needed, progress=progress)
    return needed


def demo_status() -> dict[str, Any]:
    """state (not built / building / done / failed / interrupted), stage, fraction, message, models, complete."""
    return DemoExperiment().status()


def start_background_build(experiment: DemoExperiment, quick: bool = False) -> str:
    """Start `python -m core demo` detached unless the experiment is done or another process is building it."""
    status = experiment.status()
    if status["state"] == "done" and status["complete"]:
        return f"demo ({experiment.recipe.name}) already built under {experiment.root}"
    if status["state"] == "building":  # status() turns a dead builder into "interrupted"
        return f"demo ({experiment.recipe.name}) is being built by process {status.get('pid')} ({status['message']})"
    experiment.root.mkdir(parents=True, exist_ok=True)
    log_path = experiment.root / "build.log"
    # at a lower CPU priority: the dashboard this build's models are for stays quick to answer while it trains
    niced = ["--nice", str(BACKGROUND_NICENESS)]
    command = [sys.executable, "-m", "core", "demo", *niced, *(["--quick"] if quick else [])]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal that started it; the dashboard reads status.json
        )
    return (
        f"building the demo experiment ({experiment.recipe.name}) in the background, process {process.pid}; "
        f"progress in {experiment.root / STATUS_FILE}, log in {log_path}"
    )
