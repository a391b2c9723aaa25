"""Where a decoder-only family keeps its decoder layers and final norm, the residual stream between layers read
with forward hooks, and the model's own head (final norm, projections, unembedding, logit soft-capping or scaling)
applied to any residual stream.

The read-out is never a re-implementation of the head: `own_head` runs the model's forward once and, where the last
decoder layer's output would go on to the head, hands the head the streams to read instead. Whatever the model does
after its layers (Gemma-2's final logit soft-capping, Cohere's `logit_scale`, Granite's `logits_scaling`, OPT's
`project_out`, Phi's biased `lm_head`) is what the lens gets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from core.common.errors import UserError

# (decoder layers, final norm) attribute paths per layout; the unembedding is the model's output embeddings. A
# model matches the first layout whose layers path it has; its final norm may be absent (OPT-350m has none).
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama-style": ("model.layers", "model.norm"),  # Llama, Mistral, Qwen2, Gemma, Gemma-2, OLMo, Phi-3, SmolLM …
    "phi-style": ("model.layers", "model.final_layernorm"),  # Phi-1, Phi-1.5, Phi-2
    "opt-style": ("model.decoder.layers", "model.decoder.final_layer_norm"),  # OPT (project_out on some sizes)
    "gpt2-style": ("transformer.h", "transformer.ln_f"),  # GPT-2, GPT-J, Falcon, BLOOM
    "gpt-neox-style": ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # GPT-NeoX, Pythia
    "mpt-style": ("transformer.blocks", "transformer.norm_f"),
}


def _lookup(model: torch.nn.Module, path: str) -> Any:
    for name in path.split("."):
        model = getattr(model, name, None)
        if model is None:
            return None
    return model


def _unknown(model: torch.nn.Module, what: str) -> UserError:
    known = "; ".join(f"{name} ({', '.join(paths)})" for name, paths in ARCHITECTURES.items())
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    named = f"{type(model).__name__}" + (f" (model_type {model_type!r})" if model_type else "")
    return UserError(f"the layer view does not know the {what} of {named}; it reads {known}")


def _layout(model: torch.nn.Module) -> tuple[str, str]:
    """The (layers, final norm) paths of the first layout whose decoder layers the model has (a ModuleList)."""
    matches = [p for p in ARCHITECTURES.values() if isinstance(_lookup(model, p[0]), torch.nn.ModuleList)]
    for paths in matches:  # prefer a layout whose final norm is there too (llama-style vs phi-style)
        if _lookup(model, paths[1]) is not None:
            return paths
    if matches:
        return matches[0]
    raise _unknown(model, "layout")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks, in order."""
    return _lookup(model, _layout(model)[0])


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm applied to the last residual stream before the unembedding (a UserError where the model has none;
    the lens does not need it: `own_head` runs whatever the model runs after its layers)."""
    norm = _lookup(model, _layout(model)[1])
    if norm is None:
        raise _unknown(model, "final norm")
    return norm


def unembedding(model: torch.nn.Module) -> torch.nn.Module:
    """The output projection from the residual stream to vocabulary logits."""
    _layout(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UserError(f"{type(model).__name__} has no output embeddings (lm_head) to read the residual stream with")
    return head


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def residual_stream(model: torch.nn.Module, keep: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list]:
    """Record the residual stream entering the first layer and leaving each layer (layers + 1 entries), via keep."""
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []

    def before_first(module: Any, args: tuple, kwargs: dict) -> None:
        states.append(keep(args[0] if args else kwargs["hidden_states"]))

    def after(module: Any, args: tuple, output: Any) -> None:
        states.append(keep(_hidden(output)))

    handles = [layers[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    handles += [layer.register_forward_hook(after) for layer in layers]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def own_head(model: torch.nn.Module, streams: Callable[[], torch.Tensor]) -> Iterator[None]:
    """While inside, a forward pass hands the model's head `streams()` ([rows, T, H], each row a residual stream
    of the input's length T) in place of the last decoder layer's output: the logits it returns are [rows, …, V],
    each row read the way the model reads its own last layer. Register after `residual_stream` to read what it
    recorded in the same pass (forward hooks run in registration order)."""
    last = decoder_layers(model)[-1]

    def replace(module: Any, args: tuple, output: Any) -> Any:
        rows = streams().to(_hidden(output).dtype)
        return (rows, *output[1:]) if isinstance(output, tuple) else rows

    handle = last.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
