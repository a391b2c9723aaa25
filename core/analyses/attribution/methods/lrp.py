"""AttnLRP (Achtibat et al., ICML 2024): the relevance of every prompt token for each answer row's logit from one
forward and one batched backward per side, with no integration steps (rules: core.analyses.attribution.lrp_rules).

LRP explains a logit, not a log-probability: a row's target is the sum of its answer tokens' logits, and the map
sums to it up to the relevance the rules leave in biases and in the softmax (the convergence delta shown beside
the map). Δ is the difference of the two sides' maps."""

from __future__ import annotations

import torch

from core.analyses.attribution.lrp_rules import lrp_rules
from core.analyses.attribution.method import ATTRIBUTION_METHODS, AttributionMethod, Maps, Run
from core.analyses.attribution.methods.gradient import GradientMethod
from core.analyses.attribution.problem import Problem, SideInputs
from core.analyses.attribution.settings import settings_options
from core.common.limits import ModelShape
from core.models.pair import SIDES


def row_logits(model: torch.nn.Module, problem: Problem, embeds: torch.Tensor) -> torch.Tensor:
    """[R]: each answer row's summed logits of its tokens, given the whole input's embeddings [L - 1, H]."""
    n = len(problem.answer_ids)
    logits = model(inputs_embeds=embeds.unsqueeze(0), use_cache=False).logits[0, -n:].float()
    tokens = logits.gather(-1, problem.answer_ids.view(n, 1)).squeeze(-1)
    return tokens @ problem.row_matrix().to(tokens.device)


def relevance(
    model: torch.nn.Module, inputs: SideInputs, problem: Problem, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, L - 1] relevance of every input position for each row (gradient × input under the rules), and [R] the
    rows' logits it explains."""
    embeds = inputs.full.detach().clone().requires_grad_(True)
    with torch.enable_grad(), lrp_rules(model, rule):
        out = row_logits(model, problem, embeds)
        rows = len(out)
        if rows == 1:
            grads = torch.autograd.grad(out.sum(), embeds)[0].unsqueeze(0)
        else:
            eye = torch.eye(rows, device=out.device, dtype=out.dtype)
            grads = torch.autograd.grad(out, embeds, eye, is_grads_batched=True)[0]
    return (grads.float() * embeds.detach().float()).sum(-1), out.detach()


@ATTRIBUTION_METHODS.register
class AttnLRP(AttributionMethod):
    name = "attn_lrp"
    description = "AttnLRP (Achtibat et al. 2024): relevance for each answer row's logit, one forward + one backward"
    contrast_exact = False
    option_specs = settings_options("lrp_rule")

    def maps(self, run: Run) -> Maps:
        problem = run.problem
        token_maps, deltas, explained = {}, {}, {}
        for side in SIDES:
            with run.pair.use(side) as model:
                per_position, logits = relevance(model, run.inputs[side], problem, run.settings.lrp_rule)
            token_maps[side] = per_position[:, problem.positions]
            deltas[side], explained[side] = per_position.sum(-1) - logits, logits
        features = problem.feature_matrix().to(token_maps["base"].device)
        base, unlearned = token_maps["base"] @ features, token_maps["unlearned"] @ features
        return Maps(base, unlearned, unlearned - base, deltas, explained)

    def sequences_per_batch(self, problem: Problem, batch_tokens: int) -> int:
        return 1

    def batch_bytes(self, shape: ModelShape, problem: Problem, sequences: int, itemsize: int) -> int:
        """As gradient × input: one forward's saved activations and one copy per answer row for the backward."""
        return GradientMethod.batch_bytes(self, shape, problem, sequences, itemsize)
