"""What a run trains: a LoRA adapter on a shared backbone, or all parameters of a model; and its frozen reference.

A LoRA trainee is one named adapter of a PeftModel; other adapters on the same backbone (the demo's target,
oracle and runs) share the backbone's weights. Its reference π_ref is another adapter (the one it started
from) or the backbone with adapters off. A full trainee's reference is a frozen copy, made only when needed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file

from core.common.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_WEIGHTS = "model.safetensors"


class Trainee:
    """The model being trained: which parameters may train, how to reach π_ref, how to save and load weights."""

    model: torch.nn.Module
    base_source: str

    def candidates(self) -> list[tuple[str, torch.nn.Parameter]]:
        raise NotImplementedError

    def reference(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError

    def load(self, folder: Path) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def freeze_except(self, trainable: list[torch.nn.Parameter]) -> None:
        """requires_grad on exactly `trainable` (PEFT's adapter switching resets the flags)."""
        keep = {id(p) for p in trainable}
        for parameter in self.model.parameters():
            parameter.requires_grad_(id(parameter) in keep)


def lora_config(rank: int, alpha: float, targets: str, dropout: float = 0.0) -> Any:
    from peft import LoraConfig

    modules: str | list[str] = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=dropout, task_type="CAUSAL_LM")


def attach_adapter(model: torch.nn.Module, name: str, init: Path | Any, trainable: bool) -> torch.nn.Module:
    """Add adapter `name` to `model` (wrapping it in a PeftModel on first use): a new LoRA from a config, or a copy
    of a saved adapter folder. Returns the PeftModel; the backbone's weights are shared, never copied."""
    from peft import PeftModel, get_peft_model

    if isinstance(init, Path):
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(str(init), adapter_name=name, is_trainable=trainable)
                return model
            return PeftModel.from_pretrained(model, str(init), adapter_name=name, is_trainable=trainable)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"could not load adapter {init}: {str(exc).splitlines()[0]}") from exc
    if isinstance(model, PeftModel):
        model.add_adapter(name, init)
        return model
    return get_peft_model(model, init, adapter_name=name)


class LoraTrainee(Trainee):
    """Adapter `adapter` of a PeftModel; π_ref is adapter `reference_adapter`, or the backbone when None."""

    def __init__(self, model: torch.nn.Module, adapter: str, reference_adapter: str | None, base_source: str) -> None:
        self.model = model
        self.adapter = adapter
        self.reference_adapter = reference_adapter
        self.base_source = base_source
        self._trainable: list[torch.nn.Parameter] = []
        model.set_adapter(adapter)

    def candidates(self) -> list[tuple[str, torch.nn.Parameter]]:
        marker = f".{self.adapter}."
        return [(n, p) for n, p in self.model.named_parameters() if marker in n and "lora_" in n]

    def freeze_except(self, trainable: list[torch.nn.Parameter]) -> None:
        self._trainable = trainable
        super().freeze_except(trainable)

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        try:
            if self.reference_adapter is None:
                with self.model.disable_adapter():
                    yield self.model
            else:
                self.model.set_adapter(self.reference_adapter, inference_mode=True)
                yield self.model
        finally:
            self.model.set_adapter(self.adapter, inference_mode=True)
            super().freeze_except(self._trainable)

    def save(self, folder: Path) -> None:
        """The adapter alone, in PEFT's layout (adapter_config.json + adapter_model.safetensors)."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.model, adapter_name=self.adapter)
        save_file(
            {k: v.detach().contiguous() for k, v in state.items()}, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"}
        )
        config = copy.deepcopy(self.model.peft_config[self.adapter])
        config.base_model_name_or_path = self.base_source
        config.inference_mode = True
        config.save_pretrained(str(folder))

    def load(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, load_file(folder / ADAPTER_WEIGHTS), adapter_name=self.adapter)

    def describe(self) -> dict[str, Any]:
        config = self.model.peft_config[self.adapter]
        return {
            "mode": "lora",
            "base_model": self.base_source,
            "rank": config.r,
            "lora_alpha": config.lora_alpha,
            "target_modules": sorted(config.target_modules)
            if isinstance(config.target_modules, set)
            else config.target_modules,
            "reference": self.reference_adapter or "base",
        }


class FullTrainee(Trainee):
    """Every parameter of a plain causal LM; π_ref is a frozen deep copy taken before training (when asked)."""

    def __init__(self, model: torch.nn.Module, base_source: str, tokenizer: Any, keep_reference: bool) -> None:
        own_shared_parameters(model)
        self.model = model
        self.base_source = base_source
        self.tokenizer = tokenizer
        self._reference = copy.deepcopy(model).requires_grad_(False).eval() if keep_reference else None

    def candidates(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.model.named_parameters())

    @contextlib.contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        if self._reference is None:
            raise RuntimeError("this trainee was made without a reference copy")
        yield self._reference

    def save(self, folder: Path) -> None:
        """A complete HF model folder (weights, config, tokenizer), loadable on its own."""
        self.model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))

    def load(self, folder: Path) -> None:
        missing, unexpected = load_model(self.model, folder / MODEL_WEIGHTS, strict=False)
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise UserError(f"checkpoint {folder} does not fit the model (missing {missing}, unexpected {unexpected})")

    def describe(self) -> dict[str, Any]:
        return {"mode": "full", "base_model": self.base_source}


def own_shared_parameters(model: torch.nn.Module) -> int:
    """Give `model` its own copy of every parameter it shares with the other side of a loaded pair
    (core.models.sharing.SHARED: the two sides hold one tensor where their checkpoints agree), so that training it
    never writes into the other side. Returns how many were copied (copy on write: only shared ones cost memory)."""
    from core.models.sharing import is_shared

    copies: dict[int, torch.nn.Parameter] = {}  # one copy per shared tensor: tied weights stay tied
    for module in model.modules():
        for key, parameter in list(module._parameters.items()):
            if parameter is not None and is_shared(parameter):
                if id(parameter) not in copies:
                    copies[id(parameter)] = torch.nn.Parameter(parameter.detach().clone(), parameter.requires_grad)
                module._parameters[key] = copies[id(parameter)]
    return len(copies)


def build_trainee(
    model: torch.nn.Module, source: str, adapter: str | None, tokenizer: Any, lora: Any | None, keep_reference: bool
) -> Trainee:
    """A trainee over a loaded, frozen backbone. With `lora` (a LoraConfig): a new adapter, or, when the model
    comes with `adapter`, a trainable copy of it whose frozen original is π_ref. Without: all parameters (an
    adapter is merged in first)."""
    if lora is not None:
        if adapter:
            model = attach_adapter(model, "reference", Path(adapter), trainable=False)
            return LoraTrainee(
                attach_adapter(model, "trained", Path(adapter), trainable=True), "trained", "reference", source
            )
        return LoraTrainee(attach_adapter(model, "trained", lora, trainable=True), "trained", None, source)
    if adapter:
        own_shared_parameters(model)  # merging writes into the weights: never into the other side of a pair
        model = attach_adapter(model, "merged", Path(adapter), trainable=False).merge_and_unload()
    return FullTrainee(model, source, tokenizer, keep_reference)
