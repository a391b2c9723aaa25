"""The gradient of every answer row from one forward pass: captum's gradient function for the per-row matrix.

captum's `LLMGradientAttribution` reruns the whole attribution once per answer row; plugged into captum's
`IntegratedGradients` or `InputXGradient` as its gradient function, this computes every row's gradient from one
forward per batch of points and one batched backward on that graph (docs/PERFORMANCE-attribution.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def shared_forward_gradients(score: Callable[[torch.Tensor], torch.Tensor], n_rows: int) -> Callable[..., tuple]:
    """A captum gradient function for inputs that are `n_rows` copies of each point, copy r targeting answer row r.

    captum expands the IG batch to steps × rows; the copies are identical, so one forward per step gives every
    row's output and one backward with batched cotangents (one-hot per row) gives every row's gradient.
    """

    def gradient_func(
        forward_fn: Any, inputs: tuple[torch.Tensor, ...], target_ind: Any = None, additional_forward_args: Any = None
    ) -> tuple[torch.Tensor, ...]:
        (expanded,) = inputs
        points = expanded.detach().unflatten(0, (-1, n_rows))[:, 0].requires_grad_(True)
        with torch.enable_grad():
            out = score(points)  # [k, R]
            if n_rows == 1:
                (grads,) = torch.autograd.grad(out.sum(), points)
                return (grads,)
            eye = torch.eye(n_rows, device=out.device, dtype=out.dtype)
            cotangents = eye.unsqueeze(1).expand(n_rows, out.shape[0], n_rows)
            (grads,) = torch.autograd.grad(out, points, cotangents, is_grads_batched=True)  # [R, k, P, H]
        return (grads.transpose(0, 1).flatten(0, 1),)

    return gradient_func
