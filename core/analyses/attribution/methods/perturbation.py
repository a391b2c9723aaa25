"""Perturbation methods (feature ablation, occlusion, Shapley sampling): prompt features replaced by the baseline,
every perturbation run through both models, and Δ = log p_unlearned − log p_base attributed itself."""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Callable

import torch

from core.analyses.attribution.method import ATTRIBUTION_METHODS, AttributionMethod, Maps, Run
from core.analyses.attribution.problem import Problem, row_logprobs
from core.analyses.attribution.settings import AttributionSettings, settings_options
from core.common.limits import FORWARD_ACTIVATION_FACTOR, ModelShape, activation_bytes
from core.models.pair import SIDES

_SEED_LOCK = threading.Lock()  # Shapley sampling seeds torch's global RNG: one seeded run at a time


class PerturbationMethod(AttributionMethod):
    """Perturbs prompt features (replaced by the baseline) and runs each perturbation through both models.

    The forward returns [base rows, unlearned rows, Δ rows] per perturbation, so captum attributes Δ itself with
    the very perturbations (and, for Shapley, the very feature orders) it uses for each side.
    """

    contrast_exact = True
    option_specs = settings_options("baseline")

    def maps(self, run: Run) -> Maps:
        problem = run.problem
        n_rows, n_features = len(problem.row_groups), len(problem.feature_groups)
        positions = problem.feature_of_position().to(run.pair.device)

        def forward(present: torch.Tensor) -> torch.Tensor:
            keep = present[:, positions].unsqueeze(-1) == 1  # [B, P, 1]: keep the token, else put the baseline
            rows = {}
            for side in SIDES:
                inputs = run.inputs[side]
                embeds = torch.where(keep, inputs.context, inputs.baseline)
                with run.pair.use(side) as model, torch.no_grad():
                    rows[side] = row_logprobs(model, inputs, problem, embeds)
            return torch.cat([rows["base"], rows["unlearned"], rows["unlearned"] - rows["base"]], dim=1)

        per_eval = self.sequences_per_batch(problem, run.batch_tokens)
        present = torch.ones(1, n_features, device=run.pair.device)
        attributions = self.run_captum(forward, present, per_eval, run.settings).reshape(3, n_rows, n_features)
        return Maps(attributions[0], attributions[1], attributions[2])

    @abstractmethod
    def run_captum(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        present: torch.Tensor,
        per_eval: int,
        settings: AttributionSettings,
    ) -> torch.Tensor:
        """captum attributions of every forward output [3R, F] (features present = 1, replaced = 0)."""

    def sequences_per_batch(self, problem: Problem, batch_tokens: int) -> int:
        return max(1, batch_tokens // len(problem.ids))  # perturbations per forward pass

    def batch_bytes(self, shape: ModelShape, problem: Problem, sequences: int, itemsize: int) -> int:
        """A plain forward pass's working set."""
        return activation_bytes(sequences, len(problem.ids), shape.hidden, 1, itemsize, FORWARD_ACTIVATION_FACTOR)


@ATTRIBUTION_METHODS.register
class FeatureAblation(PerturbationMethod):
    name = "feature_ablation"
    description = "replace one prompt token/word at a time by the baseline; Δ attributed exactly"

    def run_captum(
        self, forward: Callable, present: torch.Tensor, per_eval: int, settings: AttributionSettings
    ) -> torch.Tensor:
        from captum.attr import FeatureAblation as CaptumAblation

        return CaptumAblation(forward).attribute(present, baselines=0.0, perturbations_per_eval=per_eval)


@ATTRIBUTION_METHODS.register
class Occlusion(PerturbationMethod):
    name = "occlusion"
    description = "replace a sliding window of prompt tokens/words by the baseline; Δ attributed exactly"
    option_specs = settings_options("baseline", "window")

    def run_captum(
        self, forward: Callable, present: torch.Tensor, per_eval: int, settings: AttributionSettings
    ) -> torch.Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        window = max(1, min(settings.window, present.shape[1]))
        return CaptumOcclusion(forward).attribute(
            present, sliding_window_shapes=(window,), strides=(1,), baselines=0.0, perturbations_per_eval=per_eval
        )


@ATTRIBUTION_METHODS.register
class ShapleySampling(PerturbationMethod):
    name = "shapley_sampling"
    description = "Shapley value sampling over random feature orders (seeded); Δ attributed exactly"
    option_specs = settings_options("baseline", "n_samples", "seed")

    def run_captum(
        self, forward: Callable, present: torch.Tensor, per_eval: int, settings: AttributionSettings
    ) -> torch.Tensor:
        from captum.attr import ShapleyValueSampling

        with _SEED_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            return ShapleyValueSampling(forward).attribute(
                present, baselines=0.0, n_samples=settings.n_samples, perturbations_per_eval=per_eval
            )
