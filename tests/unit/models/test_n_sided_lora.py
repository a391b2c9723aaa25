"""core.models.adapters.n_sided_lora: N adapters (and "no adapter") on one backbone in one stacked pass, against one
plain PEFT pass per adapter.

Tolerance. The stacked pass and a per-adapter pass do the same float32 arithmetic in another order: the LoRA term is
x·A·(B·s) instead of ((x·A)·B)·s, and the shared base matmul runs over N blocks instead of one (another BLAS
blocking). Reordering a float32 sum of W terms moves it by at most ~W·eps32 of its scale, and the logits come out of
L such stages, so the two passes agree within τ = 2·L·W·eps32·max|z| (tests/tiny_models.logit_tolerance; here
L = 2, W = 64, max|z| ≈ 0.5: τ ≈ 1.5e-5). The issue asks for 1e-5; both bounds are asserted (the smaller wins).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from tiny_models import logit_tolerance

from core.models.adapters import n_sided_lora, two_sided_lora

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[4, 9, 17, 30, 64, 65, 3], [7, 7, 3, 2, 60, 1, 9]])


def three_adapter_model(model_dir, use_dora: bool = False):
    """Adapters a (r=4 on q/v/down, scaling 5/4), b (r=3 on q/o/up, scaling 7/3) and c (r=2 on k/gate, scaling
    3): ranks, target modules and scalings differ, so padding and the layers only some blocks adapt are exercised."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    configs = {
        "a": LoraConfig(r=4, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
        "b": LoraConfig(r=3, lora_alpha=7, target_modules=["q_proj", "o_proj", "up_proj"], init_lora_weights=False),
        "c": LoraConfig(
            r=2, lora_alpha=6, target_modules=["k_proj", "gate_proj"], init_lora_weights=False, use_dora=use_dora
        ),
    }
    peft_model = get_peft_model(model, configs.pop("a"), adapter_name="a")
    for name, config in configs.items():
        peft_model.add_adapter(name, config)
    return peft_model.eval()


def one_pass(peft_model, name: str) -> torch.Tensor:
    """The logits of IDS under one adapter (or none), PEFT's own forward."""
    if name == "__base__":
        with peft_model.disable_adapter():
            return peft_model(IDS).logits
    peft_model.set_adapter(name)
    return peft_model(IDS).logits


NAMES = [
    ["a", "b", "c"],
    ["__base__", "a", "b", "c"],
    ["c", "__base__", "c", "a"],  # a repeated adapter and a base block in the middle
    ["b"],
    ["a", "b", "c", "__base__", "a", "b", "c", "__base__", "a", "b", "c", "__base__"],  # 12 blocks
]


@pytest.mark.parametrize("names", NAMES)
def test_n_sided_lora_equals_one_pass_per_adapter(tiny_model_dir, names):
    peft_model = three_adapter_model(tiny_model_dir)
    with torch.no_grad():
        with n_sided_lora(peft_model, names) as stacked:
            got = peft_model(IDS.repeat(len(names), 1)).logits
        alone = torch.cat([one_pass(peft_model, name) for name in names])
    assert stacked
    tau = min(1e-5, logit_tolerance(peft_model.get_base_model(), alone))
    assert (got - alone).abs().max().item() <= tau
    assert not any("forward" in vars(m) for m in peft_model.modules())  # PEFT's own forward is back
    blocks = got.view(len(names), *IDS.shape, -1)
    for i, j in itertools.combinations(range(len(names)), 2):
        if names[i] != names[j]:  # the blocks really take their own adapter
            assert (blocks[i] - blocks[j]).abs().max() > 1e-3


def test_two_sides_agree_with_two_sided_lora(tiny_model_dir):
    """For two sides the N-sided path does what the two-sided one does (the same arithmetic per block)."""
    peft_model = three_adapter_model(tiny_model_dir)
    doubled = IDS.repeat(2, 1)
    with torch.no_grad():
        with n_sided_lora(peft_model, ["__base__", "b"]) as stacked:
            many = peft_model(doubled).logits
        with two_sided_lora(peft_model, ["__base__", "b"]) as paired:
            two = peft_model(doubled).logits
    assert stacked and paired
    assert (many - two).abs().max().item() <= min(1e-5, logit_tolerance(peft_model.get_base_model(), two))


def test_n_sided_lora_leaves_variants_merged_and_training_models_to_peft(tiny_model_dir):
    cases = [three_adapter_model(tiny_model_dir, use_dora=True), three_adapter_model(tiny_model_dir).train()]
    merged = three_adapter_model(tiny_model_dir)
    merged.base_model.model.model.layers[0].self_attn.q_proj.merge(adapter_names=["a"])
    for peft_model in [*cases, merged]:
        with n_sided_lora(peft_model, ["a", "b", "c"]) as stacked:
            assert not any("forward" in vars(m) for m in peft_model.modules())
        assert not stacked
    with n_sided_lora(three_adapter_model(tiny_model_dir), []) as stacked:
        assert not stacked
