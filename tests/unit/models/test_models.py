"""ModelSpec parsing, pair loading (folders, adapters sharing one backbone) and clear errors for bad sources."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import logit_tolerance, rank_bounds, save_tiny_model_dir

from core.analyses.probe import ProbeRequest, score
from core.common.errors import UserError
from core.models.adapters import merged_adapter, two_sided_lora
from core.models.loading import describe_tokenizer_difference, load_tokenizer, resolve_dtype
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.scoring.encoding import encode


def save_lora_adapter(model_dir: Path, out: Path, seed: int = 5) -> Path:
    """A LoRA adapter with non-zero B (so it changes the model), saved like any PEFT adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


def test_parse_spec_options():
    spec = ModelSpec.parse("org/model@v2::adapter=/tmp/a::gguf=m.gguf", dtype="float32")
    assert (spec.source, spec.revision, spec.adapter, spec.gguf_file, spec.dtype) == (
        "org/model",
        "v2",
        "/tmp/a",
        "m.gguf",
        "float32",
    )
    with pytest.raises(UserError, match="unknown model spec option"):
        ModelSpec.parse("org/model::colour=red")
    with pytest.raises(UserError, match="empty"):
        ModelSpec.parse("  ")


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(UserError, match=str(missing)):
        ModelPair.load(ModelSpec(str(missing)), ModelSpec(str(missing)))


def test_folder_without_config_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        ModelPair.load(ModelSpec(str(tmp_path / "empty")), ModelSpec(str(tmp_path / "empty")))


def test_unreachable_hub_id_fails_with_a_message():
    with pytest.raises(UserError, match="someorg/not-a-real-model"):
        ModelPair.load(ModelSpec("someorg/not-a-real-model"), ModelSpec("someorg/not-a-real-model"))


def test_non_utf8_config_is_a_clear_error(tiny_model_dir):
    (tiny_model_dir / "config.json").write_bytes(b'{"model_type": "llama", "x": "\xff\xfe"}')
    with pytest.raises(UserError, match=str(tiny_model_dir)):
        ModelPair.load(ModelSpec(str(tiny_model_dir)), ModelSpec(str(tiny_model_dir)))


def test_pickle_only_folder_needs_opt_in(tiny_model_dir):
    from safetensors.torch import load_file

    weights = load_file(tiny_model_dir / "model.safetensors")
    torch.save(weights, tiny_model_dir / "pytorch_model.bin")
    (tiny_model_dir / "model.safetensors").unlink()
    with pytest.raises(UserError, match="safetensors"):
        ModelPair.load(ModelSpec(str(tiny_model_dir)), ModelSpec(str(tiny_model_dir)))
    opted = ModelSpec(str(tiny_model_dir), allow_unsafe_weights=True)
    assert ModelPair.load(opted, opted).dtype == torch.float32


def test_mismatched_tokenizers_say_what_differs(tmp_path):
    first = save_tiny_model_dir(tmp_path / "a")
    second = save_tiny_model_dir(tmp_path / "b", words=tuple(f"v{i}" for i in range(66)))
    with pytest.raises(UserError, match="vocabularies differ"):
        ModelPair.load(ModelSpec(str(first)), ModelSpec(str(second)))
    message = describe_tokenizer_difference(
        load_tokenizer(ModelSpec(str(first))), load_tokenizer(ModelSpec(str(second)))
    )
    assert "only in base e.g. ['capital'" in message and "only in unlearned e.g. ['v0'" in message


def test_two_folders_with_one_tokenizer_load_as_separate_models(tmp_path):
    first = save_tiny_model_dir(tmp_path / "a", seed=0)
    second = save_tiny_model_dir(tmp_path / "b", seed=1)
    pair = ModelPair.load(ModelSpec(str(first)), ModelSpec(str(second)))
    assert not pair.shares_backbone
    result = score(pair, [ProbeRequest("the capital of france is", "paris")])[0]
    assert result.tokens[0].delta != 0.0


def test_adapter_pair_shares_the_backbone(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = save_lora_adapter(tiny_model_dir, tmp_path / "adapter")
    pair = ModelPair.load(ModelSpec(str(tiny_model_dir)), ModelSpec(str(adapter)))
    assert pair.shares_backbone
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain_bytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    adapter_bytes = sum(t.numel() * t.element_size() for t in load_file(adapter / "adapter_model.safetensors").values())
    assert pair.parameter_bytes() == pytest.approx(plain_bytes + adapter_bytes, rel=0.02)

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).merge_and_unload()
    ids = torch.tensor([[4, 9, 17, 30, 64, 65]])
    with pair.use("base") as base, torch.no_grad():
        torch.testing.assert_close(base(ids).logits, plain(ids).logits)
    with pair.use("unlearned") as unlearned, torch.no_grad():
        torch.testing.assert_close(unlearned(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-4)
    with pair.use("base") as base, torch.no_grad():  # switching back really disables the adapter again
        torch.testing.assert_close(base(ids).logits, plain(ids).logits)


def test_two_adapters_on_one_backbone(tiny_model_dir, tmp_path):
    first = save_lora_adapter(tiny_model_dir, tmp_path / "a1", seed=1)
    second = save_lora_adapter(tiny_model_dir, tmp_path / "a2", seed=2)
    pair = ModelPair.load(ModelSpec(str(first)), ModelSpec(str(second)))
    same = ModelPair.load(ModelSpec(str(first)), ModelSpec(str(first)))
    assert pair.shares_backbone
    moved = score(pair, [ProbeRequest("the capital of france", "is paris")])[0]
    still = score(same, [ProbeRequest("the capital of france", "is paris")])[0]
    assert any(abs(t.delta) > 1e-4 for t in moved.tokens)
    assert all(t.delta == pytest.approx(0.0, abs=1e-6) for t in still.tokens)


def test_adapter_without_base_is_explained(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(UserError, match="does not name its base model"):
        ModelPair.load(ModelSpec(str(folder)), ModelSpec(str(folder)))


def test_dtype_defaults():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_merged_adapter_equals_the_unmerged_lora_and_restores_the_weights(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = save_lora_adapter(tiny_model_dir, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    before = {name: p for name, p in peft_model.named_parameters()}
    values = {name: p.detach().clone() for name, p in before.items()}
    ids = torch.tensor([[4, 9, 17, 30, 64, 65], [7, 7, 3, 2, 60, 1]])
    with torch.no_grad():
        lora = peft_model(ids).logits
        with merged_adapter(peft_model) as merged:
            folded = peft_model(ids).logits
        after = peft_model(ids).logits
        assert merged
        torch.testing.assert_close(folded, lora, atol=1e-5, rtol=1e-4)
        assert (folded - plain(ids).logits).abs().max() > 1e-3  # the adapter really acts inside the context
        torch.testing.assert_close(after, lora, atol=0, rtol=0)  # the same tensors are back: no drift
    now = dict(peft_model.named_parameters())
    assert now.keys() == before.keys() and all(now[n] is before[n] for n in now)
    assert all(torch.equal(now[n], values[n]) for n in now)


def test_merged_adapter_leaves_dora_unmerged(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).eval()
    ids = torch.tensor([[4, 9, 17, 30]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        with merged_adapter(peft_model) as merged:
            torch.testing.assert_close(peft_model(ids).logits, expected, atol=0, rtol=0)
    assert not merged


def two_adapter_model(model_dir: Path, use_dora: bool = False):
    """One backbone with adapters "a" (r=4 on q/v/down, scaling 5/4) and "b" (r=3 on q/o/up, scaling 7/3): ranks,
    target modules and scalings differ, so every padding and zero-side case of the stacked path is exercised."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    first = LoraConfig(r=4, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    second = LoraConfig(
        r=3, lora_alpha=7, target_modules=["q_proj", "o_proj", "up_proj"], init_lora_weights=False, use_dora=use_dora
    )
    peft_model = get_peft_model(model, first, adapter_name="a")
    peft_model.add_adapter("b", second)
    return peft_model.eval()


@pytest.mark.parametrize("names", [["a", "b"], ["b", "a"], ["__base__", "b"], ["a", "__base__"], ["a", "a"]])
def test_two_sided_lora_equals_peft_mixed_batch(tiny_model_dir, names):
    """The stacked two-halves path against PEFT's own mixed-batch routing, and against each side run alone."""
    peft_model = two_adapter_model(tiny_model_dir)
    ids = torch.tensor([[4, 9, 17, 30, 64, 65, 3], [7, 7, 3, 2, 60, 1, 9]])
    doubled = ids.repeat(2, 1)
    routing = [names[0]] * 2 + [names[1]] * 2
    with torch.no_grad():
        expected = peft_model(doubled, adapter_names=routing).logits
        with two_sided_lora(peft_model, names) as stacked:
            got = peft_model(doubled).logits
        alone = []
        for name in names:
            if name == "__base__":
                with peft_model.disable_adapter():
                    alone.append(peft_model(ids).logits)
            else:
                peft_model.set_adapter(name)
                alone.append(peft_model(ids).logits)
        after = peft_model(doubled, adapter_names=routing).logits
    assert stacked
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, torch.cat(alone), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, expected, atol=0, rtol=0)  # PEFT's own forward is back
    assert not any("forward" in vars(m) for m in peft_model.modules())
    if names[0] != names[1]:
        assert (got[:2] - got[2:]).abs().max() > 1e-3  # the halves really differ


def test_two_sided_lora_leaves_variants_merged_and_training_models_to_peft(tiny_model_dir):
    cases = [two_adapter_model(tiny_model_dir, use_dora=True), two_adapter_model(tiny_model_dir).train()]
    merged = two_adapter_model(tiny_model_dir)
    merged.base_model.model.model.layers[0].self_attn.q_proj.merge(adapter_names=["a"])
    for peft_model in [*cases, merged]:
        with two_sided_lora(peft_model, ["a", "b"]) as stacked:
            assert not any("forward" in vars(m) for m in peft_model.modules())
        assert not stacked


def reference_rank_bounds(pair: ModelPair, row) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Per scored token, (base, unlearned) bounds on its rank from one unbatched pass per side: the joint and the
    side-by-side passes' float32 logits may each lie τ from it (tiny_models.logit_tolerance), so a rival within 2τ
    of the target may rank on either side of it, and the two passes may disagree there."""
    sides = []
    for side in ("base", "unlearned"):
        with pair.use(side) as model, torch.no_grad():
            logits = model(torch.tensor([row.input_ids])).logits[0].double()
        tau, ids = logit_tolerance(model, logits), row.input_ids
        sides.append([rank_bounds(logits[t - 1], ids[t], tau) for t in range(row.score_from, len(ids))])
    return list(zip(*sides, strict=True))


@pytest.mark.parametrize("base_has_adapter", [False, True])
def test_one_joint_pass_equals_one_pass_per_side(tiny_model_dir, tmp_path, base_has_adapter):
    """Adapter pairs on one backbone score both sides in one mixed-adapter pass; it must equal side by side."""
    first = save_lora_adapter(tiny_model_dir, tmp_path / "a1", seed=1)
    second = save_lora_adapter(tiny_model_dir, tmp_path / "a2", seed=2)
    pair = ModelPair.load(ModelSpec(str(first if base_has_adapter else tiny_model_dir)), ModelSpec(str(second)))
    requests = [ProbeRequest("the capital of france", "is paris"), ProbeRequest("one two three four five six")]
    calls = []
    with pair.joint() as joint:
        assert joint is not None and joint[1] == ["base" if base_has_adapter else "__base__", "unlearned"]
        hook = joint[0].get_base_model().register_forward_hook(lambda *args: calls.append(1))
    joint_results = score(pair, requests)
    hook.remove()
    assert len(calls) == 1  # one forward pass for both sides

    class Apart:  # the same pair, made to run one pass per side
        def __getattr__(self, name):
            return getattr(pair, name)

        @contextlib.contextmanager
        def joint(self):
            yield None

    apart = score(Apart(), requests)
    for request, together, alone in zip(requests, joint_results, apart, strict=True):
        bounds = reference_rank_bounds(pair, encode(pair.tokenizer, request.prompt, request.answer))
        for a, b, (base, unlearned) in zip(together.tokens, alone.tokens, bounds, strict=True):
            assert a.token_id == b.token_id
            for token in (a, b):  # both passes' ranks, tie-aware against a side-by-side unbatched pass
                assert base[0] <= token.rank_base <= base[1] and unlearned[0] <= token.rank_unlearned <= unlearned[1]
            assert a.logprob_base == pytest.approx(b.logprob_base, abs=1e-5)
            assert a.logprob_unlearned == pytest.approx(b.logprob_unlearned, abs=1e-5)
            assert a.kl == pytest.approx(b.kl, abs=1e-5)
    assert any(abs(t.delta) > 1e-3 for t in joint_results[0].tokens)


def test_pairs_of_separate_models_have_no_joint_pass(tiny_model_dir, tmp_path):
    first = save_lora_adapter(tiny_model_dir, tmp_path / "a1", seed=1)
    with ModelPair.load(ModelSpec(str(tiny_model_dir)), ModelSpec(str(tiny_model_dir))).joint() as joint:
        assert joint is None  # no adapters: the same backbone twice is scored side by side
    other = save_tiny_model_dir(tmp_path / "other", seed=9)
    with ModelPair.load(ModelSpec(str(first)), ModelSpec(str(other))).joint() as joint:
        assert joint is None
