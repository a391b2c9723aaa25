"""How to evaluate (EvalSettings) and what (EvalModel): the inputs of `core.evaluation.evaluate`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core.common.errors import UserError
from core.common.limits import MAX_BATCH_SIZE, MAX_NEW_TOKENS, check_range
from core.models.spec import ModelSpec
from core.scoring.templates import Template, default_for_specs, load_template, resolve_template

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 200
MIA_SPLITS = ("forget", "holdout")
SCORING_VERSION = 2  # 2: open-unlearning's scored tokens, names and Min-K%++ moments (cached results of 1 are stale)
Progress = Callable[[int, int, str], None]  # (batches done, batches in all, what is running)


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate. batch_size counts items (each brings its answer, paraphrased and perturbed rows).

    template: a template name or file (core.scoring.templates); None → each model's default (plain for the demo
    models, the chat template for an instruct model), or the legacy `chat` flag where that is set.
    score_end: score what open-unlearning scores (answer + end-of-turn tokens + EOS); False: the answer only.
    pad_mask: open-unlearning's attention mask (every pad-token id masked, end-of-turn tokens too where pad is
    the end-of-turn token); model_dtype_logp: log-softmax in the model's dtype (open-unlearning on bf16 models).
    Both default off; `open_unlearning()` turns both on (docs/FIDELITY.md)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    rouge: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    generation_batch_size: int = DEFAULT_BATCH_SIZE
    chat: bool | None = None
    max_length: int | None = None
    template: str | None = None
    score_end: bool = True
    pad_mask: bool = False
    model_dtype_logp: bool = False
    reference: str | None = None  # a model spec for mia_reference (its losses are subtracted)
    rouge_splits: tuple[str, ...] | None = None  # the splits ROUGE generates on (None: every split)
    gradnorm: bool = False  # mia_gradnorm: one backward pass per forget/holdout item

    def __post_init__(self) -> None:
        if min(self.batch_size, self.generation_batch_size, self.max_new_tokens) < 1:
            raise UserError("batch sizes and max_new_tokens must be at least 1")
        check_range(self.batch_size, 1, MAX_BATCH_SIZE, "batch size")
        check_range(self.generation_batch_size, 1, MAX_BATCH_SIZE, "generation batch size")
        check_range(self.max_new_tokens, 1, MAX_NEW_TOKENS, "max_new_tokens")

    def cache_fields(self) -> dict[str, Any]:
        """The settings that change numbers (batch sizes do not)."""
        fields = {"chat": self.chat, "max_length": self.max_length, "rouge": self.rouge, "template": self.template}
        fields |= {"score_end": self.score_end, "pad_mask": self.pad_mask, "model_dtype_logp": self.model_dtype_logp}
        fields |= {"reference": self.reference, "gradnorm": self.gradnorm, "scoring": SCORING_VERSION}
        fields |= {"rouge_splits": list(self.rouge_splits)} if self.rouge_splits is not None else {}
        return fields | ({"max_new_tokens": self.max_new_tokens} if self.rouge else {})

    def template_for(self, tokenizer: Any, spec_text: str | None = None) -> Template:
        """The template a model is evaluated with: the one set, else the legacy chat flag, else its default."""
        if self.template is not None:
            return load_template(self.template)
        if self.chat is not None:
            return resolve_template(self.chat)
        return load_template(default_for_specs([spec_text], tokenizer))

    def open_unlearning(self) -> EvalSettings:
        """These settings with open-unlearning's attention mask and log-softmax dtype (its numbers to 1e-4)."""
        return dataclasses.replace(self, score_end=True, pad_mask=True, model_dtype_logp=True)


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
