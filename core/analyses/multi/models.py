"""Many models against one base: the entries (a spec, a label, the run and step it comes from), a run folder's
checkpoints in step order, and the loaded set, where every adapter on one backbone is attached to one PeftModel
(the backbone is held once) and any base / model pair can be taken out as a ModelPair."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from core.analyses.multi.memory import MemoryPlan, memory_plan
from core.common.errors import UserError
from core.common.limits import check_range
from core.models import loading
from core.models.adapters import attach_adapters
from core.models.pair import JobLock, ModelPair, Side, job_args
from core.models.spec import DEMO_PREFIX, SKIP_MEMORY_CHECK_ENV, ModelSpec, env_flag, resolve_spec
from core.unlearn.checkpoints import MANIFEST, RUN_FILE, checkpoint_dirs

log = logging.getLogger(__name__)

MAX_MODELS = 64  # unlearned models in one set: open-unlearning publishes hundreds, a page shows a few dozen


@dataclass(frozen=True)
class ModelEntry:
    """One model of a set: its spec, a label, and (for a checkpoint of a run) the run's name and the step."""

    spec: ModelSpec
    label: str
    run: str | None = None
    step: int | None = None


def run_entries(run: str | Path, template: ModelSpec) -> list[ModelEntry]:
    """Every complete checkpoint of an unlearning run folder (`OUT/checkpoint-<step>/`, core.unlearn.checkpoints),
    in step order, labelled METHOD@STEP; `template` gives the load options (dtype, device, opt-ins)."""
    folder = Path(run).expanduser()
    if not folder.is_dir():
        raise UserError(f"run folder not found: {run}")
    checkpoints = checkpoint_dirs(folder)
    if not checkpoints:
        raise UserError(f"{run} holds no complete checkpoint-<step> folder (the output of an unlearning run)")
    name = run_method(folder, next(iter(checkpoints.values())))
    return [
        ModelEntry(replace(template, source=str(path), adapter=None), f"{name}@{step}", name, step)
        for step, path in checkpoints.items()
    ]


def spec_entry(text: str, template: ModelSpec) -> ModelEntry:
    """A typed spec as an entry labelled as typed; a demo checkpoint (`demo:npo@4`) carries its run and step
    (labelled npo@4), so it joins that run's trajectory. `template` gives the load options."""
    spec = ModelSpec.parse(text, **_load_options(template))
    name = text.strip()
    stage, _, step = name[len(DEMO_PREFIX) :].partition("@") if name.startswith(DEMO_PREFIX) else ("", "", "")
    if stage and step.isdigit():
        return ModelEntry(spec, f"{stage}@{int(step)}", stage, int(step))
    return ModelEntry(spec, name)


def run_method(folder: Path, checkpoint: Path) -> str:
    """The method a run trained, from run.json or a checkpoint's manifest; else the folder's name."""
    for path in (folder / RUN_FILE, checkpoint / MANIFEST):
        try:
            method = json.loads(path.read_text(encoding="utf-8")).get("method")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(method, str) and method.strip():
            return method.strip()
    return folder.name


def unique_labels(entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    """The entries with repeated labels numbered ("npo@4", "npo@4 (2)"), so every model has its own name."""
    seen: dict[str, int] = {}
    out = []
    for entry in entries:
        count = seen.get(entry.label, 0) + 1
        seen[entry.label] = count
        out.append(entry if count == 1 else replace(entry, label=f"{entry.label} ({count})"))
    return out


class ModelSet:
    """A base and N unlearned models with one tokenizer. Side 0 is the base, side i + 1 the i-th model; sides on one
    backbone share its weights and its lock. `pair(i)` is the base against model i as a ModelPair."""

    def __init__(
        self,
        base: ModelSpec,
        entries: list[ModelEntry],
        sides: list[Side],
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        plan: MemoryPlan | None = None,
    ) -> None:
        self.base = base
        self.entries = entries
        self.sides = sides
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.plan = plan

    @property
    def labels(self) -> list[str]:
        return [entry.label for entry in self.entries]

    @classmethod
    def load(
        cls,
        base: ModelSpec,
        entries: Sequence[ModelEntry],
        progress: Callable[[str], None] | None = None,
        memory_check: bool | None = None,
    ) -> ModelSet:
        """Load the base and every model, each backbone once (adapters on it attached to one PeftModel), after
        refusing a set that will not fit (`memory_check`, default: unless ULENS_SKIP_MEMORY_CHECK is set)."""
        say = progress or (lambda message: log.info(message))
        entries = unique_labels(entries)
        if not entries:
            raise UserError("no unlearned model given: name at least one model or run folder")
        check_range(len(entries), 1, MAX_MODELS, "number of unlearned models")
        specs = [resolve_spec(base), *(resolve_spec(entry.spec) for entry in entries)]
        device = loading.resolve_device(specs[0].device)
        dtype = loading.resolve_dtype(specs[0].dtype, device)
        plan = memory_plan(specs, device, dtype)
        if memory_check if memory_check is not None else not env_flag(SKIP_MEMORY_CHECK_ENV):
            plan.check()
        tokenizer = _shared_tokenizer(specs, say)
        backbones: dict[tuple[Any, ...], list[int]] = {}
        for i, spec in enumerate(specs):
            backbones.setdefault(spec.backbone_key(), []).append(i)
        sides: list[Side | None] = [None] * len(specs)
        for users in backbones.values():
            say(f"loading {specs[users[0]].source}")
            model = loading.load_backbone(specs[users[0]], device, dtype)
            for i, side in _backbone_sides(model, [specs[i].adapter for i in users], say).items():
                sides[users[i]] = side
        return cls(specs[0], entries, [s for s in sides if s is not None], tokenizer, device, dtype, plan)

    def pair(self, index: int) -> ModelPair:
        """The base against model `index` (0-based) as a ModelPair sharing this set's weights and locks."""
        if not 0 <= index < len(self.entries):
            raise UserError(f"no model {index}; the set holds {len(self.entries)}")
        spec = self.entries[index].spec
        sides = {"base": self.sides[0], "unlearned": self.sides[index + 1]}
        return ModelPair(sides, self.tokenizer, self.device, self.dtype, {"base": self.base, "unlearned": spec})

    def groups(self) -> list[list[int]]:
        """Side indices grouped by the PeftModel they run on (adapters on one backbone); other sides alone."""
        grouped: dict[int, list[int]] = {}
        for i, side in enumerate(self.sides):
            grouped.setdefault(id(side.model) if side.peft else -1 - i, []).append(i)
        return list(grouped.values())

    @contextlib.contextmanager
    def use(self, index: int) -> Iterator[torch.nn.Module]:
        """Side `index` (0: the base) with its adapter active, under its lock (see ModelPair.use)."""
        with self.sides[index].active(*job_args(None, None)) as model:
            yield model

    @contextlib.contextmanager
    def hold(self, index: int) -> Iterator[None]:
        """The lock of side `index`'s backbone, for a pass over several of its adapters at once."""
        with self.sides[index].lock.hold(*job_args(None, None)):
            yield

    def parameter_bytes(self) -> int:
        """Bytes held by the set's parameters, each storage once (a shared backbone is counted once)."""
        seen: set[int] = set()
        total = 0
        for side in self.sides:
            for tensor in [*side.model.parameters(), *side.model.buffers()]:
                pointer = tensor.untyped_storage().data_ptr()
                if pointer not in seen:
                    seen.add(pointer)
                    total += tensor.untyped_storage().nbytes()
        return total


def _shared_tokenizer(specs: list[ModelSpec], say: Callable[[str], None]) -> Any:
    """The base's tokenizer, once every other backbone's is found to agree with it."""
    say(f"loading tokenizer of {specs[0].label()}")
    tokenizer = loading.load_tokenizer(specs[0])
    seen = {specs[0].backbone_key()}
    for spec in specs[1:]:
        if spec.backbone_key() in seen:
            continue
        seen.add(spec.backbone_key())
        difference = loading.describe_tokenizer_difference(tokenizer, loading.load_tokenizer(spec))
        if difference:
            raise UserError(f"{spec.label()} does not share the base's tokenizer, so tokens cannot be compared: "
                            f"{difference}")  # fmt: skip
    return tokenizer


def _backbone_sides(model: torch.nn.Module, adapters: list[str | None], say: Callable[[str], None]) -> dict[int, Side]:
    """The sides on one loaded backbone (`adapters`: each side's adapter folder or None), sharing its lock; each
    distinct adapter folder is attached once, under the name model_<k>."""
    lock = JobLock()
    if not any(adapters):
        return {i: Side(model, lock, None, False) for i in range(len(adapters))}
    names: dict[str, str] = {}
    for path in adapters:
        if path and path not in names:
            names[path] = f"model_{len(names)}"
    say(f"attaching {len(names)} adapter(s)")
    peft_model = attach_adapters(model, {name: path for path, name in names.items()})
    return {i: Side(peft_model, lock, names[path] if path else None, True) for i, path in enumerate(adapters)}


def demo_entries(template: ModelSpec, exclude: Sequence[str] = ()) -> list[tuple[str, ModelEntry]]:
    """The built demo models as (spec text, entry): every checkpoint of each unlearning run (METHOD@STEP, in step
    order) and the target and oracle as single models; `exclude` drops spec texts (the base, say). Nothing is
    built here: only what `DemoExperiment.available()` lists."""
    from core.unlearn.demo import DemoExperiment
    from core.unlearn.recipes import BASE, TARGET, UNLEARNED

    experiment = DemoExperiment()
    runs = {stage.name for stage in experiment.recipe.stages if stage.start == TARGET}
    out = []
    for name in experiment.available():
        stage, _, step = name.partition("@")
        if not step and (name in (BASE, UNLEARNED) or stage in runs):
            continue  # the backbone alone, and a run's final checkpoint under its bare name (listed with its step)
        text = f"demo:{name}"
        if text in exclude:
            continue
        spec = replace(ModelSpec.parse(text), **_load_options(template))
        out.append((text, ModelEntry(spec, name, stage if step else None, int(step) if step else None)))
    return out


def _load_options(template: ModelSpec) -> dict[str, Any]:
    """The fields of `template` that say how to load a model (not where it comes from)."""
    fields = ("dtype", "device", "device_map", "trust_remote_code", "allow_unsafe_weights")
    return {name: getattr(template, name) for name in fields}
