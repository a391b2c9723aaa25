"""Attribution on a tiny random Llama pair: every map against an independent computation (plain autograd, captum's
own LLM wrappers, ablations done by hand), plus the completeness axiom and the CLI contract."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from cli_args import pair_args, run_attribute_cli
from tiny_models import EPS32, TinyTokenizer, logit_tolerance, make_tiny_llama, save_tiny_model_dir

from core.analyses.attribution import (
    ATTRIBUTION_METHODS,
    BASELINES,
    AttributionResult,
    AttributionSettings,
    attribute,
    word_groups,
)
from core.common.errors import UserError
from core.models.pair import ModelPair
from core.scoring.encoding import encode

PROMPT, ANSWER = "the capital of france is", "paris."
EOS = TinyTokenizer.eos_token_id


@pytest.fixture
def pair() -> ModelPair:
    return ModelPair.from_models(make_tiny_llama(seed=0), make_tiny_llama(seed=1), TinyTokenizer())


def token_ids() -> tuple[list[int], int]:
    encoded = encode(TinyTokenizer(), PROMPT, ANSWER, max_length=128)
    return encoded.input_ids, encoded.score_from


def answer_logprobs(model: torch.nn.Module, ids: list[int], p: int) -> torch.Tensor:
    """Per answer token log-prob from a plain forward on token ids (float64 softmax)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(p, len(ids))])


def sum_error(*sums: torch.Tensor) -> torch.Tensor:
    """How far float32 arithmetic may put a ± combination of sums from exact, each sum given by its terms (last
    dim): a float32 sum of n terms, each itself a float32 result (one rounding), is within (n+1)·eps32·Σ|terms|;
    the combination within the total. Two sums of 7 log-probs ≈ −32 (ulp 3.8e-6): 2·8·eps32·32 ≈ 6e-5. The
    reference's float64 log-softmax of its own float32 logits adds nothing of that order: batched and unbatched
    logits here differ by ~1e-7, under one ulp of a log-prob (≈ −4.6: 4.8e-7)."""
    return sum((t.shape[-1] + 1) * EPS32 * t.abs().sum(-1) for t in sums)


def plain_logit_tolerance(model: torch.nn.Module, ids: list[int]) -> float:
    """τ of tiny_models.logit_tolerance for a plain pass over `ids`."""
    with torch.no_grad():
        return logit_tolerance(model, model(torch.tensor([ids])).logits)


def models(pair: ModelPair) -> dict[str, torch.nn.Module]:
    out = {}
    for side in ("base", "unlearned"):
        with pair.use(side) as model:
            out[side] = model
    return out


def test_registry_lists_the_methods():
    assert {"integrated_gradients", "input_x_gradient", "feature_ablation", "occlusion", "shapley_sampling"} <= set(
        ATTRIBUTION_METHODS
    )
    assert {"pad", "eos", "neutral", "zero"} <= set(BASELINES)
    assert all(method.description for method in ATTRIBUTION_METHODS.values())


def test_integrated_gradients_completeness(pair):
    """Row sums = F(input) − F(baseline) + the reported delta; with an eos baseline and 32 steps, within 1%."""
    ids, p = token_ids()
    settings = AttributionSettings(per_token=True, baseline="eos", n_steps=32)
    result = attribute(pair, PROMPT, ANSWER, settings=settings)
    for side, model in models(pair).items():
        baseline_ids = [ids[0]] + [EOS] * (p - 1) + ids[p:]  # BOS is special: fed as it is
        at_input, at_baseline = answer_logprobs(model, ids, p), answer_logprobs(model, baseline_ids, p)
        change = at_input - at_baseline
        attributions = torch.tensor(getattr(result, side), dtype=torch.float64)
        sums = attributions.sum(1)
        reported = torch.tensor(result.convergence_delta[side], dtype=torch.float64)
        # the reported delta is float32 Σ attributions − float32 (F(input) − F(baseline)) from the code's own
        # endpoints: equal to the exact value of that up to the rounding of those sums
        ends = [
            torch.tensor(getattr(result, name)[side], dtype=torch.float64) for name in ("logprob", "baseline_logprob")
        ]
        own = ends[0] - ends[1]
        tolerance = sum_error(attributions, own[:, None]) + EPS32 * reported.abs()
        assert torch.all((sums - own - reported).abs() <= tolerance), (sums - own - reported, tolerance)
        # the endpoints (one answer token per row) against the plain pass: log-probs of two float32 forward passes,
        # within 2τ (|δ log p| ≤ |δ z_target| + |δ logsumexp| ≤ 2·max|δz|, τ = logit_tolerance)
        tau = max(plain_logit_tolerance(model, x) for x in (ids, baseline_ids))
        torch.testing.assert_close(ends[0], at_input, atol=2 * tau, rtol=0)
        torch.testing.assert_close(ends[1], at_baseline, atol=2 * tau, rtol=0)
        assert torch.all((sums - change).abs() <= 0.01 * change.abs() + 1e-6)


def test_reported_delta_is_the_quadrature_error_when_it_does_not_converge(pair):
    """The pad embedding of the tiny model is zero: IG converges badly there, and the delta says by how much."""
    ids, p = token_ids()
    result = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(baseline="pad", n_steps=8))
    with pair.use("base") as model:
        baseline_ids = [ids[0]] + [0] * (p - 1) + ids[p:]
        at_input, at_baseline = answer_logprobs(model, ids, p), answer_logprobs(model, baseline_ids, p)
        change = (at_input - at_baseline).sum()
    assert abs(result.convergence_delta["base"][0]) > 1e-3
    # the code's delta = float32 Σ attributions − (float32 Σ log p(input) − float32 Σ log p(baseline))
    tolerance = sum_error(torch.tensor(result.base[0], dtype=torch.float64), at_input, at_baseline).item()
    assert sum(result.base[0]) - change.item() == pytest.approx(result.convergence_delta["base"][0], abs=tolerance)


class _CaptumTokenizer:
    """What captum's TextTokenInput needs from a tokenizer, over the tiny character tokenizer."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.tokenizer, self.prompt_ids = TinyTokenizer(), prompt_ids

    def encode(self, text: str, return_tensors: str | None = None) -> torch.Tensor:
        return torch.tensor([self.prompt_ids])

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def __call__(self, text: str, return_offsets_mapping: bool = False, add_special_tokens: bool = True) -> dict:
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids
        return {"input_ids": ids, "offset_mapping": [(i, i + 1) for i in range(len(ids))]}


def test_per_token_matrix_matches_captum_llm_gradient_attribution(pair):
    """Same numbers as captum's one-IG-per-answer-token wrapper (tolerance 1e-5 absolute)."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    ids, p = token_ids()
    ours = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(per_token=True, baseline="eos", n_steps=16))
    tokenizer = _CaptumTokenizer(ids[:p])
    for side, model in models(pair).items():
        llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.model.embed_tokens), tokenizer)
        text = TextTokenInput(PROMPT, tokenizer, baselines=EOS, skip_tokens=[TinyTokenizer.bos_token_id])
        theirs = llm.attribute(text, target=torch.tensor(ids[p:]), n_steps=16).token_attr
        torch.testing.assert_close(torch.tensor(getattr(ours, side)), theirs.float(), atol=1e-5, rtol=0)


def test_answer_prefix_view_matches_captum_ig_per_step(pair):
    """With the answer's earlier tokens attributed too, row k equals captum IG over the first p+k embeddings."""
    from captum.attr import IntegratedGradients

    ids, p = token_ids()
    settings = AttributionSettings(
        per_token=True, baseline="eos", n_steps=8, include_answer_prefix=True, keep_special=False
    )
    ours = torch.tensor(attribute(pair, PROMPT, ANSWER, settings=settings).base)
    model = models(pair)["base"]
    embeds = model.model.embed_tokens(torch.tensor([ids[:-1]])).detach()
    baseline = model.model.embed_tokens(torch.full((1, len(ids) - 1), EOS)).detach()
    for k in range(len(ids) - p):
        width = p + k

        def logprob(x: torch.Tensor, k: int = k) -> torch.Tensor:
            return torch.log_softmax(model(inputs_embeds=x).logits[:, -1], dim=-1)[:, ids[p + k]]

        theirs = IntegratedGradients(logprob).attribute(embeds[:, :width], baseline[:, :width], n_steps=8).sum(-1)[0]
        torch.testing.assert_close(ours[k, :width], theirs, atol=1e-5, rtol=0)
        assert torch.all(ours[k, width:] == 0)  # causal: later answer tokens cannot matter


def test_input_x_gradient_matches_plain_autograd(pair):
    ids, p = token_ids()
    ours = attribute(pair, PROMPT, ANSWER, "input_x_gradient", settings=AttributionSettings(per_token=True))
    model = models(pair)["unlearned"]
    for k in range(len(ids) - p):
        x = model.model.embed_tokens(torch.tensor([ids[:-1]])).detach().requires_grad_(True)
        logp = torch.log_softmax(model(inputs_embeds=x).logits[0, p - 1 + k], dim=-1)[ids[p + k]]
        (grad,) = torch.autograd.grad(logp, x)
        expected = (grad * x)[0, 1:p].sum(-1)  # BOS is not attributed
        torch.testing.assert_close(torch.tensor(ours.unlearned[k]), expected.detach(), atol=1e-6, rtol=1e-5)
    assert ours.convergence_delta is None


def test_per_token_rows_sum_to_the_whole_answer(pair):
    whole = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(baseline="eos", n_steps=8))
    rows = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(per_token=True, baseline="eos", n_steps=8))
    torch.testing.assert_close(torch.tensor(rows.delta).sum(0), torch.tensor(whole.delta[0]), atol=1e-5, rtol=0)
    assert whole.answer_tokens == [" paris."]


def test_word_granularity_sums_token_attributions_per_word(pair):
    settings = AttributionSettings(per_token=True, baseline="eos", n_steps=8)
    tokens = attribute(pair, PROMPT, ANSWER, settings=settings)
    words = attribute(
        pair, PROMPT, ANSWER, settings=AttributionSettings(**{**settings.__dict__, "granularity": "word"})
    )
    # By hand: "the" | " capital" | " of" | " france" | " is" (BOS is special: fed, not attributed); " paris" | "."
    starts = [0] + [i for i, t in enumerate(tokens.prompt_tokens) if t == " "]
    bounds = [*starts, len(tokens.prompt_tokens)]
    column_groups = [range(a, b) for a, b in itertools.pairwise(bounds)]
    row_groups = [range(0, 6), range(6, 7)]
    assert words.prompt_tokens == ["the", " capital", " of", " france", " is"]
    assert words.answer_tokens == [" paris", "."]
    for side in ("base", "unlearned", "delta"):
        token_map = torch.tensor(getattr(tokens, side))
        hand = torch.tensor([[token_map[list(r)][:, list(c)].sum().item() for c in column_groups] for r in row_groups])
        torch.testing.assert_close(torch.tensor(getattr(words, side)), hand, atol=1e-5, rtol=0)


def test_word_groups_rules():
    texts = ["<s>", "The", " cap", "ital", " of", " France", "?", "\n", "Answer", ":"]
    special = [True] + [False] * 9
    assert word_groups(texts, special) == [[0], [1], [2, 3], [4], [5], [6], [7, 8], [9]]


def test_ablation_attributes_delta_exactly(pair):
    """Δ map = unlearned map − base map, and every entry = F(x) − F(x with that token replaced), by hand."""
    ids, p = token_ids()
    result = attribute(pair, PROMPT, ANSWER, "feature_ablation", settings=AttributionSettings(baseline="eos"))
    torch.testing.assert_close(
        torch.tensor(result.delta), torch.tensor(result.unlearned) - torch.tensor(result.base), atol=1e-6, rtol=0
    )
    assert result.contrast_exact
    for side, model in models(pair).items():
        full = answer_logprobs(model, ids, p)
        ablated = [answer_logprobs(model, [*ids[:i], EOS, *ids[i + 1 :]], p) for i in range(1, p)]
        hand = torch.stack([full.sum() - a.sum() for a in ablated])
        # each entry: a difference of two float32 sums of the 7 answer log-probs (≈ −32 each)
        tolerance = torch.stack([sum_error(full, a) for a in ablated])
        got = torch.tensor(getattr(result, side)[0], dtype=torch.float64)
        assert torch.all((got - hand).abs() <= tolerance), ((got - hand).abs().max(), tolerance.min())


def test_occlusion_with_window_one_is_feature_ablation(pair):
    ablation = attribute(pair, PROMPT, ANSWER, "feature_ablation", settings=AttributionSettings(per_token=True))
    occlusion = attribute(pair, PROMPT, ANSWER, "occlusion", settings=AttributionSettings(per_token=True, window=1))
    # Each Δ entry is (F_u(x) − F_u(x_i)) − (F_b(x) − F_b(x_i)), four float32 log-probs (one answer token per row;
    # |F(x_i)| ≤ |F(x)| + |entry|): two float32 computations of it agree within sum_error of those four. (Today
    # occlusion with window 1 runs the very batches ablation does and the maps are bit-identical, but nothing in
    # either contract promises the same batching.)
    terms = []
    for side in ("base", "unlearned"):
        entries = torch.tensor(getattr(ablation, side), dtype=torch.float64)  # [rows, features]
        full = torch.tensor(ablation.logprob[side], dtype=torch.float64)[:, None].expand_as(entries)
        terms += [full, full - entries]
    tolerance = sum_error(torch.stack(terms, dim=-1))
    gap = (torch.tensor(occlusion.delta, dtype=torch.float64) - torch.tensor(ablation.delta, dtype=torch.float64)).abs()
    assert torch.all(gap <= tolerance), (gap.max(), tolerance.min())


def test_shapley_sampling_is_efficient_and_seeded(pair):
    """Per sampled order, Shapley contributions add up to F(all present) − F(all replaced), for each side and Δ."""
    settings = AttributionSettings(granularity="word", baseline="eos", n_samples=2, seed=3)
    result = attribute(pair, PROMPT, ANSWER, "shapley_sampling", settings=settings)
    for side in ("base", "unlearned"):
        change = result.logprob[side][0] - result.baseline_logprob[side][0]
        assert sum(getattr(result, side)[0]) == pytest.approx(change, abs=1e-4)
    torch.testing.assert_close(
        torch.tensor(result.delta), torch.tensor(result.unlearned) - torch.tensor(result.base), atol=1e-5, rtol=0
    )
    again = attribute(pair, PROMPT, ANSWER, "shapley_sampling", settings=settings)
    assert again.delta == result.delta


def test_zero_baseline_equals_the_zero_pad_embedding(pair):
    """The tiny Llama's pad row is all zeros, so the zero-embedding baseline must give the pad baseline's map."""
    with pair.use("base") as model:
        assert torch.all(model.model.embed_tokens.weight[0] == 0)
    pad = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(baseline="pad", n_steps=4))
    zero = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(baseline="zero", n_steps=4))
    assert zero.base == pad.base and zero.unlearned == pad.unlearned


def test_special_tokens_are_attributed_only_on_request(pair):
    kept = attribute(pair, PROMPT, ANSWER, "input_x_gradient")
    attributed = attribute(pair, PROMPT, ANSWER, "input_x_gradient", settings=AttributionSettings(keep_special=False))
    assert attributed.prompt_tokens == ["<s>", *kept.prompt_tokens]
    assert attributed.base[0][1:] == pytest.approx(kept.base[0], abs=1e-6)


def test_works_inside_inference_mode(pair):
    with torch.inference_mode():
        result = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(n_steps=4))
    assert len(result.base[0]) == len(result.prompt_tokens)


@pytest.mark.parametrize(
    ("prompt", "answer", "method", "settings", "message"),
    [
        (PROMPT, "", "integrated_gradients", AttributionSettings(), "answer is empty"),
        (PROMPT, "   ", "integrated_gradients", AttributionSettings(), "answer is empty"),
        ("x" * 130, ANSWER, "integrated_gradients", AttributionSettings(), "context"),
        (PROMPT, ANSWER, "lrp", AttributionSettings(), "unknown attribution method"),
        (PROMPT, ANSWER, "integrated_gradients", AttributionSettings(baseline="mask"), "unknown baseline"),
        (PROMPT, ANSWER, "integrated_gradients", AttributionSettings(granularity="char"), "granularity"),
        (PROMPT, ANSWER, "integrated_gradients", AttributionSettings(n_steps=0), "at least 1"),
    ],
)
def test_bad_input_is_a_user_error(pair, prompt, answer, method, settings, message):
    with pytest.raises(UserError, match=message):
        attribute(pair, prompt, answer, method, settings=settings)


def test_result_round_trips_and_frames(pair):
    result = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(per_token=True, n_steps=4))
    assert AttributionResult.from_json(result.to_json()) == result
    frame = result.to_frame()
    assert len(frame) == len(result.answer_tokens) * len(result.prompt_tokens)
    assert frame["delta"].tolist() == [x for row in result.delta for x in row]


def test_cli_json_contract(tmp_path, capsys):
    base, unlearned = save_tiny_model_dir(tmp_path / "a", seed=0), save_tiny_model_dir(tmp_path / "b", seed=1)
    status, out = run_attribute_cli(
        capsys,
        *pair_args(base, unlearned, "the capital of france is", "paris"),
        "--per-token",
        "--n-steps",
        "4",
        "--json",
    )
    payload = json.loads(out)
    assert status == 0
    assert {"prompt_tokens", "answer_tokens", "base", "unlearned", "delta", "convergence_delta"} <= set(payload)
    assert payload["answer_tokens"] == ["paris"]
    assert len(payload["delta"][0]) == len(payload["prompt_tokens"]) == 5
    status, out = run_attribute_cli(capsys, "--list")
    assert status == 0 and "integrated_gradients" in out and "feature_ablation" in out
