"""Many models at once: a base against N unlearned models (every checkpoint of a run, several methods), probed in
one batched pass per backbone, with the memory the set takes, and the logit lens across checkpoints."""

from core.analyses.multi.lens import CheckpointLens, lens_across
from core.analyses.multi.memory import MemoryPlan, memory_plan
from core.analyses.multi.models import (
    MAX_MODELS,
    ModelEntry,
    ModelSet,
    demo_entries,
    run_entries,
    spec_entry,
    unique_labels,
)
from core.analyses.multi.probe import MultiProbeResult, probe_many, score_many, side_logits

__all__ = [
    "MAX_MODELS",
    "CheckpointLens",
    "MemoryPlan",
    "ModelEntry",
    "ModelSet",
    "MultiProbeResult",
    "demo_entries",
    "lens_across",
    "memory_plan",
    "probe_many",
    "run_entries",
    "score_many",
    "side_logits",
    "spec_entry",
    "unique_labels",
]
