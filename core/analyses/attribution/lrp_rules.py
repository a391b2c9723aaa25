"""AttnLRP's propagation rules (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024) as gradient × input: while `lrp_rules(model)` is active, the gradient of an output with
respect to the input embeddings, times those embeddings, is the LRP relevance of each input dimension.

The rules, each made by a forward hook on this model's own modules (nothing is patched process-wide, so other
models and threads are untouched), with the "detach trick" v = f(x).detach() + (lin(x) − lin(x).detach()), whose
value is f(x) and whose gradient is lin's:
- linear layers (projections, the unembedding): ε-LRP with ε → 0, which gradient × input is already (a bias keeps
  its own share of relevance);
- elementwise nonlinearities (SiLU, GELU): the identity rule, gradient out/in (relevance passes unchanged);
- the gate product act(gate(x)) · up(x) of gated MLPs, and the two matrix products of attention (QKᵀ and A·V): the
  uniform rule, half of the relevance to each factor: the gradient of the product is halved, and so the queries
  and keys (in QKᵀ, after A·V) get a quarter, the values a half;
- softmax: the plain gradient, which gradient × input turns into AttnLRP's softmax rule x_i (R_i − s_i Σ_j R_j)
  (rule "attnlrp"; a Taylor expansion at the input whose bias keeps part of the relevance by design: about half of
  the logit on SmolLM2, the whole of AttnLRP's gap, docs/CAUSAL.md); or no gradient through the attention weights at
  all (rule "cp": CP-LRP, Ali et al. 2022, which conserves relevance exactly);
- RMSNorm and LayerNorm: the identity rule on the normalisation factor (the factor 1/σ held constant: the norm
  becomes linear in its input).

Families read: Llama-style blocks (q/k/v projections, gated MLP with gate/up/down projections, RMSNorm: Llama,
Mistral, Qwen2/3, SmolLM, OLMo, Gemma), GPT-2 (fused c_attn, c_fc/c_proj MLP, LayerNorm) and GPT-NeoX (fused per-head
query_key_value, dense_h_to_4h/dense_4h_to_h MLP). Any other block layout, norm or a logit soft-cap is refused with
a UserError naming what is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from core.analyses.lens.architecture import decoder_layers
from core.common.errors import UserError

LRP_RULES = ("attnlrp", "cp")


def scale_gradient(x: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """x in value; its gradient multiplied by `factor` (a number or a tensor broadcast against x)."""
    return x * factor + (x * (1 - factor)).detach()


def linearised(output: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """`output` in value, with the gradient of `linear` (a function of the same input that is linear in it)."""
    return output.detach() + (linear - linear.detach())


def _ratio(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """output / x elementwise, 0 where x is 0 (an element with zero input carries no relevance)."""
    safe = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.zeros_like(output), output / safe).detach()


def _identity_hook(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """The identity rule for an elementwise map (activation, RMSNorm): gradient output / input."""
    x = args[0]
    return linearised(output, x * _ratio(output, x))


def _layer_norm_hook(module: torch.nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """LayerNorm with 1/σ held constant: (x − mean) / σ.detach() · w + b."""
    x = args[0]
    centred = x - x.mean(-1, keepdim=True)
    sigma = (centred.pow(2).mean(-1, keepdim=True) + module.eps).sqrt().detach()
    linear = centred / sigma
    if module.weight is not None:
        linear = linear * module.weight
    if module.bias is not None:
        linear = linear + module.bias
    return linearised(output, linear.to(output.dtype))


def _scale_output(factor: float | torch.Tensor) -> Any:
    def hook(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return scale_gradient(output, factor.to(output.device, output.dtype) if torch.is_tensor(factor) else factor)

    return hook


def _halve_input(module: Any, args: tuple) -> tuple:
    return (scale_gradient(args[0], 0.5), *args[1:])


def _factors(rule: str) -> tuple[float, float]:
    """Gradient factors of (queries and keys, values): AttnLRP halves A·V and QKᵀ (¼, ½); CP-LRP holds the attention
    weights constant, so A·V is linear in the values (0, 1)."""
    return (0.25, 0.5) if rule == "attnlrp" else (0.0, 1.0)


def _attention_hooks(attention: torch.nn.Module, rule: str, config: Any) -> list[tuple[torch.nn.Module, Any]]:
    qk, v = _factors(rule)
    if all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj")):
        return [
            (attention.q_proj, _scale_output(qk)),
            (attention.k_proj, _scale_output(qk)),
            (attention.v_proj, _scale_output(v)),
        ]
    hidden = config.hidden_size
    if hasattr(attention, "c_attn"):  # GPT-2: [q | k | v] along the last dimension
        factor = torch.tensor([qk] * (2 * hidden) + [v] * hidden)
        return [(attention.c_attn, _scale_output(factor))]
    if hasattr(attention, "query_key_value"):  # GPT-NeoX: per head [q | k | v]
        head = hidden // config.num_attention_heads
        factor = torch.tensor(([qk] * (2 * head) + [v] * head) * config.num_attention_heads)
        return [(attention.query_key_value, _scale_output(factor))]
    raise UserError(f"AttnLRP does not know the attention layout of {type(attention).__name__}")


def _mlp_hooks(mlp: torch.nn.Module) -> list[tuple[torch.nn.Module, Any, str]]:
    if all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return [(mlp.act_fn, _identity_hook, "forward"), (mlp.down_proj, _halve_input, "pre")]
    act = getattr(mlp, "act", None)
    if act is not None and (hasattr(mlp, "c_fc") or hasattr(mlp, "dense_h_to_4h")):
        return [(act, _identity_hook, "forward")]
    raise UserError(f"AttnLRP does not know the MLP layout of {type(mlp).__name__}")


def _block_parts(block: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    attention = next((getattr(block, n) for n in ("self_attn", "attn", "attention") if hasattr(block, n)), None)
    mlp = getattr(block, "mlp", None)
    if attention is None or mlp is None:
        raise UserError(f"AttnLRP does not know the block layout of {type(block).__name__}")
    return attention, mlp


def _check_supported(model: torch.nn.Module) -> None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(config, name, None):
            raise UserError(f"AttnLRP has no rule for {type(model).__name__}'s {name} (a tanh on the logits)")


def _norm_hook(module: torch.nn.Module) -> Any | None:
    if isinstance(module, torch.nn.LayerNorm):
        return _layer_norm_hook
    if type(module).__name__.endswith("RMSNorm"):
        return _identity_hook
    return None


@contextlib.contextmanager
def lrp_rules(model: torch.nn.Module, rule: str = "attnlrp") -> Iterator[None]:
    """While active, gradient × input of any output with respect to the input embeddings is its LRP relevance."""
    if rule not in LRP_RULES:
        raise UserError(f"unknown LRP rule {rule!r}; choose one of {', '.join(LRP_RULES)}")
    _check_supported(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hooks: list[tuple[torch.nn.Module, Any, str]] = []
    for block in decoder_layers(model):
        attention, mlp = _block_parts(block)
        hooks += [(module, hook, "forward") for module, hook in _attention_hooks(attention, rule, config)]
        hooks += _mlp_hooks(mlp)
    for module in model.modules():
        hook = _norm_hook(module)
        if hook is not None:
            hooks.append((module, hook, "forward"))
        elif "norm" in type(module).__name__.lower():
            raise UserError(f"AttnLRP has no rule for the norm {type(module).__name__}")
    handles = [
        module.register_forward_pre_hook(hook) if kind == "pre" else module.register_forward_hook(hook)
        for module, hook, kind in hooks
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
