"""What an attribution method is: the run it gets (pair, problem, inputs, settings), the maps it returns, and the
ATTRIBUTION_METHODS registry, which imports every module of `methods/` on its first read (each registers its
methods), so a new method is one more module there and nothing depends on what was imported before."""

from __future__ import annotations

import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from core.analyses.attribution.problem import Problem, SideInputs
from core.analyses.attribution.settings import AttributionSettings
from core.common import Option, Registry
from core.common.limits import ModelShape
from core.models.pair import ModelPair


@dataclass
class Maps:
    """Token- or feature-level maps [R, F] per side, Δ, and optional per-row completeness error per side."""

    base: torch.Tensor
    unlearned: torch.Tensor
    delta: torch.Tensor
    convergence_delta: dict[str, torch.Tensor] | None = None
    explained: dict[str, torch.Tensor] | None = None  # per side, what the map should sum to (None: F(x) − F(baseline))


@dataclass
class Run:
    """Everything a method needs: the pair, the problem, each side's inputs, the settings."""

    pair: ModelPair
    problem: Problem
    inputs: dict[str, SideInputs]
    settings: AttributionSettings
    batch_tokens: int
    endpoints: dict[str, torch.Tensor] = field(default_factory=dict)  # side -> [2, R]: F(input), F(baseline)


class AttributionMethod(ABC):
    """An attribution method; subclasses register under `name` and the CLI and dashboard list the registry.

    `option_specs` are the settings the method reads (the dashboard draws a control for each)."""

    name: ClassVar[str]
    description: ClassVar[str]
    contrast_exact: ClassVar[bool]
    option_specs: ClassVar[tuple[Option, ...]] = ()

    @abstractmethod
    def maps(self, run: Run) -> Maps: ...

    @abstractmethod
    def sequences_per_batch(self, problem: Problem, batch_tokens: int) -> int:
        """How many prompt + answer sequences one batch runs (the memory check sizes a batch by it)."""

    @abstractmethod
    def batch_bytes(self, shape: ModelShape, problem: Problem, sequences: int, itemsize: int) -> int:
        """Bytes one batch of `sequences` keeps beyond the weights, answer logits aside (the memory check)."""


METHOD_MODULES = Path(__file__).with_name("methods")
ATTRIBUTION_METHODS: Registry[AttributionMethod] = Registry(
    "attribution method",
    instantiate=True,
    providers=tuple(
        f"{__package__}.methods.{name}" for name in sorted(m.name for m in pkgutil.iter_modules([str(METHOD_MODULES)]))
    ),
)
