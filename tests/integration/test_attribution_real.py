"""Integration: attribution and its CLI on the real embedded SmolLM2, against captum's own per-token runs."""

from __future__ import annotations

import json

import pytest
import torch
from cli_args import pair_args, run_attribute_cli
from tiny_models import logit_tolerance

from core.analyses.attribution import AttributionSettings, attribute
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.scoring.encoding import encode


@pytest.fixture(scope="module")
def smollm_pair(embedded_model_dir):
    spec = ModelSpec(str(embedded_model_dir), dtype="float32", device="cpu")
    return ModelPair.load(spec, spec)


def test_smollm2_per_token_matrix_matches_captum(smollm_pair):
    """The real model, same ids and steps: our shared-forward matrix equals captum's per-token IG runs."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    prompt, answer = "The capital of France is", "Paris."
    settings = AttributionSettings(per_token=True, baseline="pad", n_steps=4)
    ours = attribute(smollm_pair, prompt, answer, settings=settings)
    tokenizer = smollm_pair.tokenizer
    encoded = encode(tokenizer, prompt, answer, max_length=smollm_pair.context_length)
    p, ids = encoded.score_from, encoded.input_ids
    assert ours.answer_tokens == [" Paris", "."]
    with smollm_pair.use("base") as model:
        llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
        text = TextTokenInput(prompt, tokenizer, baselines=tokenizer.pad_token_id)
        assert text.inp_tensor[0].tolist() == ids[:p]
        theirs = llm.attribute(text, target=torch.tensor(ids[p:]), n_steps=4).token_attr
        # fp32 on a real model: the two computations sum in different orders (one shared forward for all answer rows
        # vs one per row, other sequence lengths and batch shapes). The gradients pass L=30 layers of sums over up
        # to W=1536 terms, so by the bound used for logits (tiny_models.logit_tolerance) they may differ by
        # 2·L·W·eps32 ≈ 1.1e-2 of the largest attribution; each entry also sums 576 embedding dims with
        # cancellation, so its error is relative to that scale, not to itself. Measured: 5e-5 to 3e-4 of it. Still
        # tight enough to fail on a real bug: another quadrature (trapezoid) or 5 steps instead of 4 moves entries
        # by more than the scale itself.
        tolerance = logit_tolerance(model, theirs)
    torch.testing.assert_close(torch.tensor(ours.base), theirs.float(), atol=tolerance, rtol=0)
    assert ours.delta == [[0.0] * len(ours.prompt_tokens)] * 2  # the same model on both sides


def test_smollm2_cli_json(embedded_model_dir, capsys):
    status, out = run_attribute_cli(
        capsys,
        *pair_args(embedded_model_dir, embedded_model_dir, "The capital of France is", "Paris"),
        "--method",
        "feature_ablation",
        "--granularity",
        "word",
        "--json",
    )
    payload = json.loads(out)
    assert status == 0 and payload["prompt_tokens"] == ["The", " capital", " of", " France", " is"]
    assert payload["convergence_delta"] is None and payload["delta"] == [[0.0] * 5]


def test_smollm2_lrp_explains_the_answer_logits(smollm_pair):
    """AttnLRP on the real model: `explained` is the answer's logits as a plain forward gives them; CP-LRP's relevance
    sums to them within the float32 bound (SmolLM2 has no biases); AttnLRP's own sum is reported as its delta."""
    import logging

    prompt, answer = "The capital of France is", " Paris."
    cp = attribute(smollm_pair, prompt, answer, "attn_lrp", settings=AttributionSettings(per_token=True, lrp_rule="cp"))
    lrp = attribute(smollm_pair, prompt, answer, "attn_lrp", settings=AttributionSettings(per_token=True))
    encoded = encode(smollm_pair.tokenizer, prompt, answer, max_length=smollm_pair.context_length)
    ids, p = torch.tensor([encoded.input_ids]), encoded.score_from
    with smollm_pair.use("base") as model, torch.no_grad():
        logits = model(input_ids=ids).logits[0]
        tolerance = logit_tolerance(model, logits)
    expected = [float(logits[p - 1 + t, ids[0, p + t]]) for t in range(ids.shape[1] - p)]
    assert cp.explained["base"] == pytest.approx(expected, abs=tolerance)
    # every relevance term is exact to the same float32 bound as a logit; the delta sums them once more
    assert max(abs(d) for d in cp.convergence_delta["base"]) <= 2 * tolerance
    shares = [abs(d) / abs(e) for d, e in zip(lrp.convergence_delta["base"], lrp.explained["base"], strict=True)]
    logging.getLogger(__name__).info("AttnLRP |Σ relevance − logit| / |logit| per answer token: %s", shares)
    assert all(torch.isfinite(torch.tensor(lrp.base)).flatten())


def test_smollm2_faithfulness_of_every_method(smollm_pair):
    """Every method's curves on the real model: deletion starts at the answer's log-prob and ends, like insertion
    starts, at the all-baseline log-prob; the best map beats a random order."""
    from core.analyses.attribution.faithfulness import compare_methods

    settings = AttributionSettings(baseline="eos", granularity="word", n_steps=8, n_samples=4)
    results, report = compare_methods(smollm_pair, "The capital of France is", " Paris.", False, settings)
    assert {r.method for r in results} == set(report.curves["base"])
    for result in results:
        curve = report.curves["base"][result.method]
        assert curve.deletion[0] == pytest.approx(result.logprob["base"][0], abs=1e-3)
        assert curve.deletion[-1] == pytest.approx(curve.insertion[0], abs=1e-3)
    assert report.curves["base"][report.best("base")].between > report.random["base"].between
