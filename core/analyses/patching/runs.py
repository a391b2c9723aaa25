"""The forward passes of activation patching: record one model's residual stream, then run another model with that
stream written over its own after layer l, one batch row per layer (each row patches a different layer).

Layer l = 0 is the stream entering the first decoder block (the embeddings, scaled or summed with positions as the
family does), l = L the stream leaving the last block; patching at l replaces the target model's stream there and
lets the target's blocks l + 1 … L, final norm and unembedding run on it. The hooks sit on the decoder blocks
(`core.analyses.lens.architecture.decoder_layers`), so every family the layer view reads is patched the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.analyses.lens.architecture import decoder_layers, residual_stream
from core.common.limits import (
    FORWARD_ACTIVATION_FACTOR,
    MEMORY_HEADROOM,
    activation_bytes,
    available_bytes,
    ensure_fits,
    model_shape,
)

POSITIONS = ("all", "answer")  # patch every position, or only those whose next token is an answer token
DEFAULT_ROWS_PER_BATCH = 64  # patched rows (layers) per forward pass; the memory check may lower it


@dataclass
class Recording:
    """One model's clean run: its residual stream [L + 1, T, H] and the answer tokens' log-probs [n]."""

    states: torch.Tensor
    token_logprobs: torch.Tensor


def answer_token_logprobs(logits: torch.Tensor, ids: torch.Tensor, score_from: int) -> torch.Tensor:
    """[B, n] log-prob of each answer token, from logits [B, T, V] over the whole sequence ids [T]."""
    n = len(ids) - score_from
    logp = torch.log_softmax(logits[:, score_from - 1 : score_from - 1 + n].float(), dim=-1)
    return logp.gather(-1, ids[score_from:].view(1, n, 1).expand(len(logits), n, 1)).squeeze(-1)


def record(model: torch.nn.Module, ids: torch.Tensor, score_from: int) -> Recording:
    """The clean run of `model` on ids [T]: every layer's residual stream and the answer tokens' log-probs."""
    with torch.no_grad(), residual_stream(model, lambda h: h[0].detach()) as states:
        logits = model(input_ids=ids.unsqueeze(0), use_cache=False).logits
    return Recording(torch.stack(states), answer_token_logprobs(logits, ids, score_from)[0].cpu())


def patch_positions(kind: str, length: int, score_from: int) -> torch.Tensor:
    """The positions patched: all, or the answer's scored positions (score_from − 1 … T − 2, the ones whose
    next-token distribution gives an answer token's log-prob)."""
    if kind == "all":
        return torch.arange(length)
    if kind == "answer":
        return torch.arange(score_from - 1, length - 1)
    raise ValueError(f"unknown positions {kind!r}; choose one of {POSITIONS}")


@contextlib.contextmanager
def _patch_hooks(
    model: torch.nn.Module, states: torch.Tensor, rows: Sequence[int], positions: torch.Tensor
) -> Iterator[None]:
    """While active, batch row i of a forward pass has its stream after layer rows[i] replaced by states[rows[i]]
    at `positions` (layer 0: the stream entering the first block)."""
    layers = decoder_layers(model)
    by_layer = {layer: i for i, layer in enumerate(rows)}

    def write(hidden: torch.Tensor, layer: int) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[by_layer[layer], positions] = states[layer, positions].to(hidden.dtype)
        return hidden

    def before_first(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (write(args[0], 0), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": write(kwargs["hidden_states"], 0)}

    def after(layer: int) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> Any:
            if isinstance(output, tuple):
                return (write(output[0], layer), *output[1:])
            return write(output, layer)

        return hook

    handles = []
    if 0 in by_layer:
        handles.append(layers[0].register_forward_pre_hook(before_first, with_kwargs=True))
    handles += [layers[layer - 1].register_forward_hook(after(layer)) for layer in rows if layer > 0]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def rows_per_batch(model: torch.nn.Module, length: int, requested: int | None = None) -> int:
    """How many patched rows one forward pass runs: the request (default DEFAULT_ROWS_PER_BATCH), lowered to what
    MEMORY_HEADROOM of the free memory holds (a forward pass's working set and the logits per row); a single row
    that does not fit is refused (core.common.limits.ensure_fits)."""
    shape = model_shape(model)
    itemsize = next(model.parameters()).element_size()
    per_row = activation_bytes(1, length, shape.hidden, 1, itemsize, FORWARD_ACTIVATION_FACTOR)
    per_row += length * shape.vocab * (itemsize + 8)  # logits, their float copy and log-softmax
    device = next(model.parameters()).device
    ensure_fits(per_row, device, f"activation patching over {length} tokens")
    free = available_bytes(device)
    fitting = DEFAULT_ROWS_PER_BATCH if free is None else max(1, int(MEMORY_HEADROOM * free // per_row))
    return max(1, min(requested or DEFAULT_ROWS_PER_BATCH, fitting))


def patched_logprobs(
    model: torch.nn.Module,
    ids: torch.Tensor,
    score_from: int,
    states: torch.Tensor,
    positions: torch.Tensor,
    layers: Sequence[int] | None = None,
    batch_rows: int | None = None,
) -> torch.Tensor:
    """[len(layers), n]: the answer tokens' log-probs under `model` with its stream after each layer replaced by
    `states` (another model's recording) at `positions`; one batch row per layer, `batch_rows` rows per pass."""
    layers = list(range(len(states))) if layers is None else list(layers)
    step = rows_per_batch(model, len(ids), batch_rows)
    positions = positions.to(ids.device)
    parts = []
    with torch.no_grad():
        for start in range(0, len(layers), step):
            rows = layers[start : start + step]
            batch = ids.unsqueeze(0).expand(len(rows), -1)
            with _patch_hooks(model, states, rows, positions):
                logits = model(input_ids=batch, use_cache=False).logits
            parts.append(answer_token_logprobs(logits, ids, score_from).cpu())
    return torch.cat(parts)


def naive_patched_logprobs(
    model: torch.nn.Module, ids: torch.Tensor, score_from: int, states: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The same as `patched_logprobs`, one full forward pass per layer (the loop bench/patching.py compares with)."""
    return torch.cat(
        [patched_logprobs(model, ids, score_from, states, positions, [layer], 1) for layer in range(len(states))]
    )
