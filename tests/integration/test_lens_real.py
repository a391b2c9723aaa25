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


def test_demo_forget_set_is_deeper_than_retain() -> None:
    """On the demo pair (the quick recipe's target vs its NPO run, built in the cache unless there), the depth
    score of forget items is higher than that of retain items (docs/CAUSAL.md has the full demo's figures)."""
    import logging

    from core.analyses.patching import depth_over_sets
    from core.unlearn.demo import DEFAULT_UNLEARNED, QUICK_ENV, RECIPES, TARGET, DemoExperiment

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(QUICK_ENV, "1")
        experiment = DemoExperiment(RECIPES["quick"])
        experiment.build([TARGET, DEFAULT_UNLEARNED])
        template = ModelSpec("demo:x", dtype="float32", device="cpu")
        pair = ModelPair.load(experiment.spec(TARGET, template), experiment.spec(DEFAULT_UNLEARNED, template))
    data = experiment.data
    sets = {name: [(i.question, i.answer) for i in getattr(data, name).items[:4]] for name in ("forget", "retain")}
    result = depth_over_sets(pair, sets)
    forget, retain = result.sets["forget"], result.sets["retain"]
    logging.getLogger(__name__).info(
        "depth score: forget %.3f %s (gaps %s), retain %.3f %s (gaps %s)",
        forget.mean_depth, [round(d, 3) for d in forget.depth], [round(g, 2) for g in forget.gap],
        retain.mean_depth, [round(d, 3) for d in retain.depth], [round(g, 2) for g in retain.gap],
    )  # fmt: skip
    assert all(0.0 <= d <= 1.0 for s in (forget, retain) for d in s.depth)
    assert forget.mean_depth > retain.mean_depth
