"""Where a decoder-only family keeps its layers, final norm and unembedding, and the residual stream between layers
read with forward hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from core.common.errors import UserError

# (decoder layers, final norm) attribute paths, per family; the unembedding is the model's output embeddings.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama-style": ("model.layers", "model.norm"),  # Llama, Mistral, Qwen, Gemma, SmolLM, Phi-3, OLMo …
    "gpt2-style": ("transformer.h", "transformer.ln_f"),
    "gpt-neox-style": ("gpt_neox.layers", "gpt_neox.final_layer_norm"),
}


def _lookup(model: torch.nn.Module, path: str) -> Any:
    for name in path.split("."):
        model = getattr(model, name, None)
        if model is None:
            return None
    return model


def _architecture(model: torch.nn.Module) -> tuple[str, str]:
    for paths in ARCHITECTURES.values():
        if all(_lookup(model, path) is not None for path in paths):
            return paths
    known = "; ".join(f"{name} ({', '.join(paths)})" for name, paths in ARCHITECTURES.items())
    raise UserError(f"the layer view does not know the layout of {type(model).__name__}; it reads {known}")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks, in order."""
    return _lookup(model, _architecture(model)[0])


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm applied to the last residual stream before the unembedding."""
    return _lookup(model, _architecture(model)[1])


def unembedding(model: torch.nn.Module) -> torch.nn.Module:
    """The output projection from the residual stream to vocabulary logits."""
    _architecture(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UserError(f"{type(model).__name__} has no output embeddings (lm_head) to read the residual stream with")
    return head


@contextlib.contextmanager
def residual_stream(model: torch.nn.Module, keep: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list]:
    """Record the residual stream entering the first layer and leaving each layer (layers + 1 entries), via keep."""
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []

    def before_first(module: Any, args: tuple, kwargs: dict) -> None:
        states.append(keep(args[0] if args else kwargs["hidden_states"]))

    def after(module: Any, args: tuple, output: Any) -> None:
        states.append(keep(output[0] if isinstance(output, tuple) else output))

    handles = [layers[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    handles += [layer.register_forward_hook(after) for layer in layers]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()
