"""Opening the models to evaluate one at a time; a backbone stays loaded while its adapters are evaluated."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from core.common.errors import UserError
from core.evaluation.candidates import Candidate
from core.models.adapters import merged_adapter
from core.models.loading import load_backbone, load_tokenizer, resolve_device, resolve_dtype
from core.models.spec import ModelSpec

log = logging.getLogger(__name__)


class ModelLoader:
    """Opens models one at a time; a backbone stays loaded while the adapters that use it are evaluated."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._backbone: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self._peft: Any = None
        self._adapter: str | None = None
        self._loaded = 0

    @contextlib.contextmanager
    def open(self, candidate: Candidate) -> Iterator[tuple[torch.nn.Module, Any]]:
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
