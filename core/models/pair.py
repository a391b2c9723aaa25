"""ModelSpec → ModelPair: a base and an unlearned causal LM with one shared tokenizer, a device and locks.

A pair whose two sides share a backbone (the same weights with a PEFT adapter on one or both sides) loads
that backbone once: each side is the backbone with its adapter switched on, or with adapters disabled. Specs and
their checks live in core.models.spec, loading and the memory check in core.models.loading, adapters in
core.models.adapters.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import torch

from core.common.errors import UserError
from core.common.limits import format_bytes
from core.models import budget, loading, offload, sharing
from core.models.adapters import attach_adapters
from core.models.spec import SKIP_MEMORY_CHECK_ENV, ModelSpec, env_flag, resolve_spec

log = logging.getLogger(__name__)

SIDES = ("base", "unlearned")
WAIT_POLL_S = 1.0  # how often a waiting caller is called back (a Streamlit rerun can stop the wait in between)
WaitCallback = Callable[[str | None, bool], None]
_JOB: contextvars.ContextVar[tuple[str | None, WaitCallback | None]] = contextvars.ContextVar(
    "ulens_model_job", default=(None, None)
)


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


def job_args(job: str | None, on_wait: WaitCallback | None) -> tuple[str | None, WaitCallback | None]:
    """Explicit arguments, else what the enclosing `model_job` set."""
    current_job, current_on_wait = _JOB.get()
    return job or current_job, on_wait or current_on_wait


class Side:
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
        sides: dict[str, Side],
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
        self.load_plan: budget.LoadPlan | None = None
        self.offloaded: dict[str, dict[str, str]] = {}  # per side, the modules kept off the device and where
        self.probe_seconds: dict[str, float] = {}  # per side, a probe-sized forward pass timed after an offloaded load
        self._difference: dict[str, Any] | None = None

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
            {"base": Side(base, base_lock, None, False), "unlearned": Side(unlearned, unlearned_lock, None, False)},
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
        max_memory: int | str | None = None,
    ) -> ModelPair:
        """Load both sides in order (never two cold loads at once), sharing a backbone where the specs allow and,
        between two full checkpoints, every tensor they hold identically (core.models.sharing). `max_memory`
        (bytes or '12GB') is a budget for the weights: what does not fit is offloaded (core.models.offload), and a
        budget is chosen automatically when the pair will not fit. A pair that cannot be loaded at all is refused
        first (`memory_check`; default: unless the environment sets ULENS_SKIP_MEMORY_CHECK)."""
        say = progress or (lambda message: log.info(message))
        specs = {"base": resolve_spec(base), "unlearned": resolve_spec(unlearned)}
        device = loading.resolve_device(specs["base"].device)
        dtype = loading.resolve_dtype(specs["base"].dtype, device)
        check = memory_check if memory_check is not None else not env_flag(SKIP_MEMORY_CHECK_ENV)
        plan = budget.plan_load(specs, device, dtype, offload.parse_size(max_memory), check, say)
        tokenizer = _shared_tokenizer(specs, say)
        models = budget.load_backbones(plan, specs, device, dtype, say)
        sides: dict[str, Side] = {}
        for key, model in models.items():
            users = [name for name in SIDES if specs[name].backbone_key() == key]
            sides.update(_backbone_sides(model, JobLock(), {name: specs[name].adapter for name in users}, say))
        pair = cls(sides, tokenizer, device, dtype, specs)
        pair.load_plan = plan
        placements = {name: plan.placements.get(specs[name].backbone_key()) for name in SIDES}
        pair.offloaded = {name: offload.offloaded(placement, device) for name, placement in placements.items()}
        if any(pair.offloaded.values()):
            say("timing one probe-sized forward pass per side (offloaded layers are read each pass)")
            pair.probe_seconds = {name: pair.time_probe(name) for name in SIDES}
        return pair

    def time_probe(self, side: str) -> float:
        """Seconds one forward pass over offload.PROBE_TOKENS tokens takes on `side`."""
        with self.use(side) as model:
            return offload.time_probe(model, self.device, len(self.tokenizer.get_vocab()))

    @contextlib.contextmanager
    def use(self, side: str, job: str | None = None, on_wait: WaitCallback | None = None) -> Iterator[torch.nn.Module]:
        """Hold the side's lock and yield its causal LM with the right adapter active. `job` labels the work for
        other callers' waiting notes and `on_wait` is called while another job holds the side (see `model_job`,
        which sets both for a whole block)."""
        if side not in self._sides:
            raise UserError(f"unknown side {side!r}; choose one of {SIDES}")
        with self._sides[side].active(*job_args(job, on_wait)) as model:
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
        with base.lock.hold(*job_args(job, on_wait)):
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

    def tensor_difference(self) -> dict[str, Any] | None:
        """'k of n tensors differ (x % of parameters)' between two full models: from the load's sharing plan, else
        by comparing the loaded tensors once (shared storage is equal at no cost); None for adapter pairs, which
        the weight map reads as low-rank terms, and where a side is offloaded without a plan."""
        plan = self.load_plan.sharing if self.load_plan else None
        if plan is not None:
            share = 100.0 * (plan.total_params - plan.identical_params) / max(plan.total_params, 1)
            return {"differing_tensors": len(plan.differing), "tensors": plan.n_tensors,
                    "differing_percent": share, "summary": plan.summary()}  # fmt: skip
        base, unlearned = self._sides["base"], self._sides["unlearned"]
        if base.peft or unlearned.peft or any(self.offloaded.values()):
            return None
        if self._difference is None:
            self._difference = sharing.tensor_difference(base.model, unlearned.model)
        return self._difference

    def describe(self) -> dict[str, Any]:
        offloaded = offload.describe_offload(self.offloaded)
        plan = self.load_plan
        return {
            "base": self.specs["base"].label() if "base" in self.specs else "in-memory model",
            "unlearned": self.specs["unlearned"].label() if "unlearned" in self.specs else "in-memory model",
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "shares_backbone": self.shares_backbone,
            "parameter_mb": round(self.parameter_bytes() / 2**20, 1),
            "tensors": (self.tensor_difference() or {}).get("summary"),
            "shared_tensors": len(plan.sharing.identical) if plan and plan.sharing else None,
            "max_memory": format_bytes(plan.budget) if plan and plan.budget else None,
            "automatic_budget": bool(plan and plan.automatic),
            "offloaded": offloaded,
            "probe_seconds": {side: round(s, 3) for side, s in self.probe_seconds.items()} or None,
            "specs": {name: asdict(spec) for name, spec in self.specs.items()},
        }


def _shared_tokenizer(specs: dict[str, ModelSpec], say: Callable[[str], None]) -> Any:
    """The base side's tokenizer, once the unlearned side's (where it has other weights) is found to agree."""
    say(f"loading tokenizer of {specs['base'].label()}")
    tokenizer = loading.load_tokenizer(specs["base"])
    if specs["unlearned"].backbone_key() != specs["base"].backbone_key():
        other = loading.load_tokenizer(specs["unlearned"])
        difference = loading.describe_tokenizer_difference(tokenizer, other)
        if difference:
            raise UserError(f"the two models do not share a tokenizer, so tokens cannot be compared: {difference}")
    return tokenizer


def _backbone_sides(
    model: torch.nn.Module, lock: JobLock, adapters: dict[str, str | None], say: Callable[[str], None]
) -> dict[str, Side]:
    """The sides that use one loaded backbone (`adapters`: each side's adapter folder or None), sharing its lock."""
    if not any(adapters.values()):
        return {name: Side(model, lock, None, False) for name in adapters}
    say(f"attaching adapter(s) {', '.join(a for a in adapters.values() if a)}")
    peft_model = attach_adapters(model, adapters)
    return {name: Side(peft_model, lock, name if adapter else None, True) for name, adapter in adapters.items()}
