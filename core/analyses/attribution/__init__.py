"""Which prompt tokens drive the answer, before and after unlearning: captum attribution for both sides of a pair.

Every method attributes the answer's log-probability (whole, or each answer token: a matrix answer rows × prompt
features) to the prompt's input embeddings, with the answer's own prefix held fixed (captum's `LLMAttribution` view;
`include_answer_prefix` attributes to the answer's earlier tokens too, inseq's view) and special tokens fed as they
are (`keep_special`; an attention sink replaced by a baseline makes the IG path very rough). Gradient methods
(integrated gradients, gradient × input) attribute each model's log-probs and show Δ as the difference of the maps;
perturbation methods (feature ablation, occlusion, Shapley sampling) run every perturbation through both models
and attribute Δ = log p_unlearned − log p_base itself (the probe's sign: negative where the answer was lost).

Speed: the per-answer-token matrix needs one gradient per answer token at every IG step. captum's
`LLMGradientAttribution` reruns the whole IG (forward and backward) once per answer token; here the answer rows
share one forward per batch of steps and get all their gradients from one batched backward on that graph
(`shared_forward_gradients`, plugged into captum's `IntegratedGradients` as its gradient function): the same
numbers for F + n·B instead of n·(F + B) (docs/PERFORMANCE-attribution.md).

Layout: `settings` (AttributionSettings, baselines), `problem` (the tokenised prompt and answer, features and rows),
`method` (AttributionMethod and the ATTRIBUTION_METHODS registry), `methods/` (one module per method family; a new
method is one more module there, found by the registry on its first read), `shared_forward` (the batched
per-row gradient), `result` (AttributionResult) and `run` (`attribute`, the entry point).
"""

from core.analyses.attribution.method import ATTRIBUTION_METHODS, AttributionMethod
from core.analyses.attribution.problem import word_groups
from core.analyses.attribution.result import AttributionResult
from core.analyses.attribution.run import attribute
from core.analyses.attribution.settings import (
    BASELINES,
    GRANULARITIES,
    SETTINGS_OPTIONS,
    AttributionSettings,
)

__all__ = [
    "ATTRIBUTION_METHODS",
    "BASELINES",
    "GRANULARITIES",
    "SETTINGS_OPTIONS",
    "AttributionMethod",
    "AttributionResult",
    "AttributionSettings",
    "attribute",
    "word_groups",
]
