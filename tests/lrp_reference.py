"""An independent reference for AttnLRP's softmax rule: the relevance it keeps in its Taylor bias, read off the
attention weights and their gradients (tests/unit/analyses/test_lrp.py, tests/integration/test_lrp_real.py)."""

from __future__ import annotations

import torch

from core.analyses.attribution.lrp_rules import lrp_rules


def softmax_bias_relevance(model, embeds: torch.Tensor, target) -> tuple[float, float, float]:
    """(Σ input relevance, the explained number, the relevance AttnLRP's softmax rule keeps), all from one eager pass
    under the rules. The paper's softmax rule (Prop. 3.1) is a first-order Taylor expansion at the input x itself:
    s_j = Σ_i x_i ∂s_j/∂x_i + b_j with bias b_j = s_j (1 − (x_j − Σ_i s_i x_i)), so of an output's relevance R_j the
    share b_j / s_j stays in the bias. x_j − Σ_i s_i x_i is shift-free, so it is read off the weights alone:
    log s_j − Σ_i s_i log s_i. R_j = ½ s_j g_j (g: the gradient at the weights; the uniform rule on A·V gives the
    weights half). `target(logits)` is the number explained."""
    model.set_attn_implementation("eager")
    embeds = embeds.detach().clone().requires_grad_(True)
    with torch.enable_grad(), lrp_rules(model, "attnlrp"):
        out = model(inputs_embeds=embeds.unsqueeze(0), use_cache=False, output_attentions=True)
        for weights in out.attentions:
            weights.retain_grad()
        explained = target(out.logits[0])
        explained.backward()
    kept = 0.0
    for weights in out.attentions:
        s = weights.detach().double()
        log_s = torch.where(s > 0, s.clamp_min(1e-300).log(), torch.zeros_like(s))
        centred = log_s - (s * log_s).sum(-1, keepdim=True)
        kept += float((0.5 * s * weights.grad.double() * (1 - centred)).sum())
    return float((embeds.grad * embeds.detach()).sum()), float(explained.detach()), kept
