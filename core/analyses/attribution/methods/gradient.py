"""Gradient methods (integrated gradients, gradient × input): each side's row log-probs attributed to its prompt
embeddings, every answer row's gradient from one shared forward; Δ is the difference of the two maps."""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterator

import torch

from core.analyses.attribution.method import ATTRIBUTION_METHODS, AttributionMethod, Maps, Run
from core.analyses.attribution.problem import Problem, row_logprobs
from core.analyses.attribution.settings import settings_options
from core.analyses.attribution.shared_forward import shared_forward_gradients
from core.common.limits import ModelShape, activation_bytes, attention_bytes, saved_for_backward
from core.models.pair import SIDES


class GradientMethod(AttributionMethod):
    """Attributes each side's row log-probs to its prompt embeddings; Δ is the difference of the two maps."""

    contrast_exact = False

    def maps(self, run: Run) -> Maps:
        token_maps, deltas = {}, {}
        for side in SIDES:
            with _side_score(run, side) as score:
                token_maps[side], deltas[side] = self.side_map(run, side, score)
        features = run.problem.feature_matrix().to(token_maps["base"].device)
        base, unlearned = token_maps["base"] @ features, token_maps["unlearned"] @ features
        convergence = None if deltas["base"] is None else deltas
        return Maps(base, unlearned, unlearned - base, convergence)

    @abstractmethod
    def side_map(
        self, run: Run, side: str, score: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The token-level map [R, P] of one side, and its per-row convergence delta (None if not defined)."""

    def sequences_per_batch(self, problem: Problem, batch_tokens: int) -> int:
        return 1  # one point: the input itself

    def batch_bytes(self, shape: ModelShape, problem: Problem, sequences: int, itemsize: int) -> int:
        """Every layer's activations of the batch's points (one forward serves every answer row), and about one
        more copy per answer row for the batched backward."""
        length, rows = len(problem.ids), len(problem.row_groups)
        kept = saved_for_backward(shape, sequences, length, itemsize)
        if rows > 1:
            kept += activation_bytes(sequences * rows, length, shape.hidden, shape.layers, itemsize, 1)
            kept += attention_bytes(sequences * rows, length, shape.heads, shape.layers, itemsize, 1)
        return kept


@contextlib.contextmanager
def _side_score(run: Run, side: str) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Hold one side's lock; yield its row-score function F(prompt_embeds [B, P, H]) -> [B, R]."""
    with run.pair.use(side) as model:
        inputs, problem = run.inputs[side], run.problem
        yield lambda embeds: row_logprobs(model, inputs, problem, embeds)


@ATTRIBUTION_METHODS.register
class IntegratedGradients(GradientMethod):
    name = "integrated_gradients"
    description = "layer integrated gradients on the input embeddings (captum), convergence delta reported"
    option_specs = settings_options("baseline", "n_steps", "method")

    def sequences_per_batch(self, problem: Problem, batch_tokens: int) -> int:
        # the batched backward holds one activation gradient per row: budget steps × length × rows
        return max(1, batch_tokens // (len(problem.ids) * len(problem.row_groups)))

    def side_map(self, run: Run, side: str, score: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        from captum.attr import IntegratedGradients as CaptumIG

        inputs, settings = run.inputs[side], run.settings
        n_rows = len(run.problem.row_groups)
        ig = CaptumIG(score)
        ig.gradient_func = shared_forward_gradients(score, n_rows)
        steps_per_batch = self.sequences_per_batch(run.problem, run.batch_tokens)
        attributions = ig.attribute(
            inputs.context.unsqueeze(0).expand(n_rows, -1, -1),
            baselines=inputs.baseline.unsqueeze(0).expand(n_rows, -1, -1),
            n_steps=settings.n_steps,
            method=settings.method,
            internal_batch_size=steps_per_batch * n_rows,
        )
        token_map = attributions.sum(-1)  # [R, P]
        change = run.endpoints[side][0] - run.endpoints[side][1]
        return token_map, token_map.sum(-1) - change


@ATTRIBUTION_METHODS.register
class InputXGradient(GradientMethod):
    name = "input_x_gradient"
    description = "gradient × input embedding (captum), one forward and one batched backward per side"

    def side_map(self, run: Run, side: str, score: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        from captum.attr import InputXGradient as CaptumIxG

        n_rows = len(run.problem.row_groups)
        method = CaptumIxG(score)
        method.gradient_func = shared_forward_gradients(score, n_rows)
        context = run.inputs[side].context.unsqueeze(0).expand(n_rows, -1, -1).clone().requires_grad_(True)
        attributions = method.attribute(context)
        return attributions.sum(-1), None
