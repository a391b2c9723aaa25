"""Tiny random models of every architecture family the project supports, built from their configs (no download),
and each family's head written out by hand from its modelling code: the reference the layer view is checked
against. Vocabulary 96 = TinyTokenizer's."""

from __future__ import annotations

import copy

import torch

VOCAB = 96
_COMMON = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 128}
_LLAMA_LIKE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}


def _config(family: str):
    import transformers as t

    gqa = {**_LLAMA_LIKE, "num_key_value_heads": 2, **_COMMON}
    return {
        "llama": lambda: t.LlamaConfig(**gqa, tie_word_embeddings=False),
        "mistral": lambda: t.MistralConfig(**gqa, sliding_window=None),
        "qwen2": lambda: t.Qwen2Config(**gqa),
        "phi": lambda: t.PhiConfig(**_LLAMA_LIKE, **_COMMON),
        "gpt2": lambda: t.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, vocab_size=VOCAB,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "gpt_neox": lambda: t.GPTNeoXConfig(**_LLAMA_LIKE, **_COMMON),
        "gemma": lambda: t.GemmaConfig(**gqa, head_dim=8),
        # soft-capping at 2.0 bends every logit of a random model: a lens that skips it is visibly wrong
        "gemma2": lambda: t.Gemma2Config(**gqa, head_dim=8, final_logit_softcapping=2.0),
        "olmo": lambda: t.OlmoConfig(**_LLAMA_LIKE, **_COMMON),
        "opt": lambda: t.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
                                   word_embed_proj_dim=16, **_COMMON),  # project_in / project_out, as OPT-350m
        "cohere": lambda: t.CohereConfig(**gqa, logit_scale=0.5),
        "granite": lambda: t.GraniteConfig(**gqa, logits_scaling=4.0),
    }[family]()  # fmt: skip


# every feature runs on these; OPT, Cohere and Granite are checked in the layer view (the defects)
FULL_FEATURES = ("llama", "mistral", "qwen2", "phi", "gpt2", "gpt_neox", "gemma", "gemma2", "olmo")
FAMILIES = (*FULL_FEATURES, "opt", "cohere", "granite")


def make_model(family: str, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(family)).eval()


def mlp_output(family: str) -> str:
    """The MLP output projection's module name inside one decoder layer (what RMU trains by default)."""
    return {"gpt2": "mlp.c_proj", "phi": "mlp.fc2", "opt": "fc2", "gpt_neox": "mlp.dense_4h_to_h"}.get(
        family, "mlp.down_proj"
    )


def layer_prefix(family: str) -> str:
    return {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "opt": "model.decoder.layers"}.get(
        family, "model.layers"
    )


def unlearned_copy(family: str, base: torch.nn.Module, layer: int = 1) -> torch.nn.Module:
    """A copy of `base` with one decoder layer's MLP output projection perturbed (RMU-style change)."""
    model = copy.deepcopy(base)
    weight = model.get_submodule(f"{layer_prefix(family)}.{layer}.{mlp_output(family)}").weight
    with torch.no_grad():
        weight.add_(0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(7)))
    return model


def hand_head(family: str, model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of a residual stream [.., H], written out from each family's modelling code: final norm, OPT's
    project_out, the unembedding (Phi's has a bias), then Gemma-2's tanh soft-capping, Cohere's scale or Granite's
    division."""
    config = model.config
    if family == "gpt2":
        hidden = model.transformer.ln_f(hidden)
    elif family == "gpt_neox":
        hidden = model.gpt_neox.final_layer_norm(hidden)
    elif family == "opt":
        hidden = model.model.decoder.final_layer_norm(hidden)
        hidden = model.model.decoder.project_out(hidden)
    elif family == "phi":
        hidden = model.model.final_layernorm(hidden)
    else:
        hidden = model.model.norm(hidden)
    logits = torch.nn.functional.linear(hidden, model.lm_head.weight, model.lm_head.bias)
    if family == "gemma2":
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    elif family == "cohere":
        logits = logits * config.logit_scale
    elif family == "granite":
        logits = logits / config.logits_scaling
    return logits
