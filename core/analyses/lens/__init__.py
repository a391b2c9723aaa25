"""The layer view: where in the network the answer appears and disappears, and what unlearning changed per layer.

- Logit lens: the residual stream after every layer, read through the model's own head (its final norm,
  unembedding and any logit scaling or soft-capping), gives each answer token's probability and rank per layer for
  both models (`logit_lens`, `hidden_knowledge_score`).
- Hidden-state drift: per layer, cosine similarity and norm change between base and unlearned activations,
  averaged over a forget set and a retain set (RMU's own diagnostic; `hidden_state_drift`).
- Weight-change map: ‖ΔW‖/‖W‖ per parameter and layer; LoRA adapters are read as B·A·scaling without merging
  (`weight_change`).

Layout: `architecture` (where each family keeps its layers, final norm and unembedding; the residual stream),
`logit` (logit lens, hidden-knowledge score), `drift` (hidden-state drift and its forget / retain sets),
`weights` (weight-change map).
"""

from core.analyses.lens.architecture import ARCHITECTURES, decoder_layers, final_norm, unembedding
from core.analyses.lens.drift import DRIFT_SETS, DriftResult, DriftSet, drift_sets, hidden_state_drift
from core.analyses.lens.logit import HiddenKnowledge, LensResult, LensSide, hidden_knowledge_score, logit_lens
from core.analyses.lens.weights import WeightChange, WeightChangeResult, weight_change

VIEWS = ("logit", "drift", "weights")  # the CLI's --view choices

__all__ = [
    "ARCHITECTURES",
    "DRIFT_SETS",
    "VIEWS",
    "DriftResult",
    "DriftSet",
    "HiddenKnowledge",
    "LensResult",
    "LensSide",
    "WeightChange",
    "WeightChangeResult",
    "decoder_layers",
    "drift_sets",
    "final_norm",
    "hidden_knowledge_score",
    "hidden_state_drift",
    "logit_lens",
    "unembedding",
    "weight_change",
]
