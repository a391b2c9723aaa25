"""How to evaluate (EvalSettings) and what (EvalModel): the inputs of `core.evaluation.evaluate`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core.common.errors import UserError
from core.common.limits import MAX_BATCH_SIZE, MAX_NEW_TOKENS, check_range
from core.models.spec import ModelSpec

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 200
MIA_SPLITS = ("forget", "holdout")
Progress = Callable[[int, int, str], None]  # (batches done, batches in all, what is running)


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
