"""AttnLRP: conservation on tiny models of each family the rules read, each rule against the paper's formula on a
hand-sized example, the map against the method's registry entry, and a clear error for an unread layout."""

from __future__ import annotations

import pytest
import torch

from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.attribution.lrp_rules import (
    _identity_hook,
    _layer_norm_hook,
    linearised,
    lrp_rules,
    scale_gradient,
)
from core.analyses.attribution.methods.lrp import relevance
from core.analyses.attribution.problem import build_problem, side_inputs
from core.common.errors import UserError
from core.models.pair import ModelPair
from tests.lrp_reference import softmax_bias_relevance
from tests.tiny_models import EPS32, TinyTokenizer, logit_tolerance, make_tiny_llama

PROMPT, ANSWER = "The capital of Ruritania", " is Strelsau."


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=128, tie_word_embeddings=False)
    return GPT2LMHeadModel(config).eval()


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    return GPTNeoXForCausalLM(config).eval()


def _without_biases(model):
    """LRP leaves a bias its share of relevance by design (and GPT-2's position embeddings, added inside the model,
    are a bias too): zero them, so that conservation is exact wherever the rules conserve."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "wpe" in name:
                param.zero_()
    return model


BUILDERS = {"llama": lambda: make_tiny_llama(0), "gpt2": lambda: _without_biases(_gpt2()),
            "gpt-neox": lambda: _without_biases(_neox())}  # fmt: skip


def _relevance(model, rule: str, per_token: bool = True):
    pair = ModelPair.from_models(model, model, TinyTokenizer())
    settings = AttributionSettings(per_token=per_token, lrp_rule=rule)
    problem = build_problem(pair, PROMPT, ANSWER, False, settings)
    inputs = side_inputs(model, problem, None)
    return relevance(model, inputs, problem, rule), problem, inputs


def _conservation_tolerance(model, per_position: torch.Tensor, problem, inputs) -> torch.Tensor:
    """Per row: the logit is within τ (logit_tolerance) of exact arithmetic; the relevance is a sum of
    positions × hidden products, each exact to float32 rounding of the chain that made it, so their sum is within
    about (positions · hidden · layers) · eps32 · Σ|terms| — bounded here by Σ|R| per position."""
    with torch.no_grad():
        logits = model(inputs_embeds=inputs.full.unsqueeze(0)).logits
    config = model.config
    terms = per_position.shape[-1] * config.hidden_size * (config.num_hidden_layers + 1)
    return logit_tolerance(model, logits) + terms * EPS32 * per_position.abs().sum(-1)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_cp_lrp_relevance_sums_to_the_explained_logit(family):
    model = BUILDERS[family]()
    (per_position, logits), problem, inputs = _relevance(model, "cp")
    assert per_position.shape == (len(problem.row_groups), len(problem.ids) - 1)
    tol = _conservation_tolerance(model, per_position, problem, inputs)
    assert ((per_position.sum(-1) - logits).abs() <= tol).all(), (per_position.sum(-1) - logits, tol)


def test_attn_lrp_with_contentless_attention_is_half_value_propagation():
    """With W_q = W_k = 0 every score is 0, so AttnLRP's softmax rule x_i (R_i − s_i Σ_j R_j) passes nothing on
    (x_i = 0): the half of each attention output's relevance sent to the weights is kept there, and the other half
    goes to the values. So AttnLRP's map equals CP-LRP's (exactly conserving) with the values' gradient halved, and
    the relevance it keeps is exactly what that halving drops."""
    model = make_tiny_llama(0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
    (attn_lrp, logits), problem, inputs = _relevance(model, "attnlrp")
    handles = [
        layer.self_attn.v_proj.register_forward_hook(lambda m, a, out: scale_gradient(out, 0.5))
        for layer in model.model.layers
    ]
    try:
        (halved, _), _, _ = _relevance(model, "cp")
    finally:
        for handle in handles:
            handle.remove()
    tol = _conservation_tolerance(model, attn_lrp, problem, inputs)
    assert ((attn_lrp - halved).abs().sum(-1) <= tol).all()
    (cp, _), _, _ = _relevance(model, "cp")
    assert ((cp.sum(-1) - logits).abs() <= tol).all()  # CP conserves; AttnLRP keeps some in the attention weights
    assert ((cp.sum(-1) - attn_lrp.sum(-1)).abs() > 10 * tol).any()


def test_identity_rule_passes_relevance_through_an_activation_unchanged():
    act = torch.nn.SiLU()
    x = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0], requires_grad=True)
    out = _identity_hook(act, (x,), act(x))
    upstream = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5])  # relevance per unit of output
    (grad,) = torch.autograd.grad(out, x, upstream)
    # R_in = x · grad = out · upstream = R_out (element by element); the value is SiLU's
    assert torch.allclose(out, act(x)) and torch.allclose(x * grad, act(x) * upstream, atol=1e-7)


def test_uniform_rule_gives_each_factor_of_a_product_half():
    a = torch.tensor([1.5, -2.0], requires_grad=True)
    b = torch.tensor([0.5, 3.0], requires_grad=True)
    out = scale_gradient(a * b, 0.5)
    ga, gb = torch.autograd.grad(out.sum(), (a, b))
    product = (a * b).detach()
    assert torch.equal(out.detach(), product)
    assert torch.allclose(a.detach() * ga, product / 2) and torch.allclose(b.detach() * gb, product / 2)


def test_softmax_gradient_times_input_is_attn_lrps_softmax_rule():
    """Proposition 3.1 of the paper: R_in_i = x_i (R_i − s_i Σ_j R_j), with R_j the relevance of output j (here
    R_j = s_j g_j for a linear read-out g of the probabilities)."""
    x = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    s = torch.softmax(x, -1)
    (grad,) = torch.autograd.grad(s, x, g)
    relevance_out = (s * g).detach()
    expected = x.detach() * (relevance_out - s.detach() * relevance_out.sum())
    assert torch.allclose(x.detach() * grad, expected, atol=1e-12)


def test_norms_hold_the_normalisation_factor_constant():
    norm = torch.nn.LayerNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = torch.tensor([[0.5, -1.0, 2.0, 0.25]], requires_grad=True)
    out = _layer_norm_hook(norm, (x,), norm(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    # linear in x with 1/σ constant: Σ x · grad = Σ (y − b), the bias keeping its share
    assert torch.allclose(out, norm(x))
    assert torch.allclose((x * grad).sum(), (norm(x) - norm.bias).sum(), atol=1e-6)
    rms = make_tiny_llama(0).model.norm
    y = rms(x.detach().repeat(1, 8)).detach()
    z = x.detach().repeat(1, 8).requires_grad_(True)
    (gz,) = torch.autograd.grad(_identity_hook(rms, (z,), rms(z)).sum(), z)
    assert torch.allclose((z * gz).detach(), y, atol=1e-6)  # RMSNorm: each element's relevance is its output


def test_linearised_keeps_the_value_and_takes_the_linear_gradient():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = linearised(x.exp(), 3 * x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(out.detach(), x.exp().detach()) and torch.equal(grad, torch.tensor([3.0, 3.0]))


def test_attn_lrp_through_attribute_on_a_pair():
    base, unlearned = make_tiny_llama(0), make_tiny_llama(1)
    pair = ModelPair.from_models(base, unlearned, TinyTokenizer())
    result = attribute(pair, PROMPT, ANSWER, "attn_lrp", settings=AttributionSettings(per_token=True))
    (expected, logits), problem, _ = _relevance(base, "attnlrp")
    assert torch.allclose(torch.tensor(result.base), expected[:, problem.positions].cpu(), atol=1e-6)
    assert result.explained["base"] == pytest.approx(logits.tolist(), abs=1e-6)
    assert torch.allclose(torch.tensor(result.delta), torch.tensor(result.unlearned) - torch.tensor(result.base))
    assert result.explained_change("base") == result.explained["base"]


def test_an_unread_layout_is_refused_clearly():
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    model = Phi3ForCausalLM(config).eval()
    with pytest.raises(UserError, match="AttnLRP does not know"), lrp_rules(model):
        pass
    with pytest.raises(UserError, match="unknown LRP rule"), lrp_rules(make_tiny_llama(0), "zplus"):
        pass


@pytest.mark.parametrize("family", list(BUILDERS))
def test_attn_lrp_keeps_exactly_the_softmax_rules_bias(family):
    """AttnLRP conserves everywhere but in the softmax: Σ input relevance = logit − the relevance the paper's
    softmax rule leaves in its Taylor bias, computed independently from the attention weights and their gradients.
    So nothing else (norms, gated MLP, rotary, GQA, residuals, head) leaks; and the map through `relevance` is the
    same map."""
    model = BUILDERS[family]()
    (per_position, logits), problem, inputs = _relevance(model, "attnlrp", per_token=False)
    n = len(problem.answer_ids)

    def target(logits_all):
        return logits_all[-n:].gather(-1, problem.answer_ids.view(n, 1)).sum()

    total, explained, kept = softmax_bias_relevance(model, inputs.full, target)
    tol = _conservation_tolerance(model, per_position, problem, inputs)
    assert explained == pytest.approx(float(logits[0]), abs=float(tol[0]))
    assert total == pytest.approx(float(per_position.sum()), abs=float(tol[0]))
    assert total == pytest.approx(explained - kept, abs=float(tol[0]))
    assert abs(kept) > float(tol[0])  # the rule does keep more than the test can resolve (not vacuous)
