"""Activation patching: where, causally, the unlearned model lost the answer.

The unlearned model is run with its residual stream after layer l replaced by the base model's (every position, or
the answer's scored positions only) and its later layers run on it; the answer's log-prob per l is the patching
curve (the layer where it comes back is where the unlearned model removed the answer). The reverse direction runs
the base model on the unlearned model's stream, and an oracle (a model never taught the forget set) gives the
reference of the two-stage Unlearning Depth Score (arXiv 2605.24614). Definitions: docs/CAUSAL.md.

Layout: `runs` (recording a stream; the batched patched forward, one row per layer, hooks on the decoder blocks),
`depth` (recovery and erasure ratios, the depth scores), `curve` (one prompt: `patch_curve`; forget vs retain:
`depth_over_sets`).
"""

from core.analyses.patching.curve import (
    DepthResult,
    DepthSet,
    ModelSource,
    PatchingResult,
    depth_over_sets,
    patch_curve,
)
from core.analyses.patching.depth import GAP_FLOOR, depth_score, erasure_ratio, oracle_depth_score, recovery_ratio
from core.analyses.patching.runs import POSITIONS, naive_patched_logprobs, patched_logprobs, record

__all__ = [
    "GAP_FLOOR",
    "POSITIONS",
    "DepthResult",
    "DepthSet",
    "ModelSource",
    "PatchingResult",
    "depth_over_sets",
    "depth_score",
    "erasure_ratio",
    "naive_patched_logprobs",
    "oracle_depth_score",
    "patch_curve",
    "patched_logprobs",
    "record",
    "recovery_ratio",
]
