"""Integration: the layer view on the real embedded SmolLM2 ends where the probe scores."""

from __future__ import annotations

import pytest

from core.analyses.lens import hidden_state_drift, logit_lens
from core.models.pair import ModelPair
from core.models.spec import ModelSpec


def test_smollm2_lens_ends_at_the_probe_scores(embedded_model_dir):
    """Last lens layer = the probe's teacher-forced log-probs; the model knows Paris (rank 1 at the last layer)."""
    from core.analyses.probe import ProbeRequest, score

    spec = ModelSpec(str(embedded_model_dir), dtype="float32", device="cpu")
    pair = ModelPair.load(spec, spec)
    result = logit_lens(pair, "The capital of France is", "Paris")
    probe = score(pair, [ProbeRequest("The capital of France is", "Paris")])[0]
    assert result.layers == list(range(31)) and result.answer_tokens == [" Paris"]
    assert result.base.logprob[-1] == pytest.approx([t.logprob_base for t in probe.tokens], abs=1e-4)
    assert result.base.rank[-1] == [1]
    base, unlearned = result.hidden_knowledge().values()
    assert (base.peak_layer, base.score) == (unlearned.peak_layer, unlearned.score)
    drift = hidden_state_drift(pair, {"forget": [("The capital of France is", "Paris")]})
    assert drift.sets["forget"].cosine == pytest.approx([1.0] * 31, abs=1e-5)
