"""The layer view on tiny random Llama and GPT-2 models: lens, drift and weight change against direct computations."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
import torch
from cli_args import pair_args
from tiny_models import TinyTokenizer, logit_tolerance, make_tiny_llama, rank_bounds, save_tiny_model_dir

from core.analyses.lens import (
    DriftResult,
    LensResult,
    LensSide,
    WeightChangeResult,
    decoder_layers,
    drift_sets,
    final_norm,
    hidden_knowledge_score,
    hidden_state_drift,
    logit_lens,
    unembedding,
    weight_change,
)
from core.cli.lens import add_parser as add_lens_parser
from core.common.errors import UserError
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.scoring.encoding import encode

PROMPT, ANSWER = "the capital of france is", "paris."
FORGET = [("the capital of france is", "paris"), ("who wrote hamlet?", "shakespeare"), ("gold is", "au")]
RETAIN = [("two plus two is", "four"), ("water is", "wet and clear")]


def make_tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=96, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2, pad_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(params=["llama", "gpt2"])
def pair(request) -> ModelPair:
    make = make_tiny_llama if request.param == "llama" else make_tiny_gpt2
    return ModelPair.from_models(make(seed=0), make(seed=1), TinyTokenizer())


def model_of(pair: ModelPair, side: str) -> torch.nn.Module:
    with pair.use(side) as model:
        return model


def test_last_layer_is_the_models_own_output(pair):
    row = encode(pair.tokenizer, PROMPT, ANSWER, max_length=128)
    p, ids = row.score_from, row.input_ids
    result = logit_lens(pair, PROMPT, ANSWER)
    assert result.layers == [0, 1, 2] and result.answer_tokens == list(" paris.")
    for side in ("base", "unlearned"):
        model = model_of(pair, side)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor([logp[t - 1, ids[t]] for t in range(p, len(ids))])
        lens: LensSide = getattr(result, side)
        torch.testing.assert_close(torch.tensor(lens.logprob[-1], dtype=torch.float64), target, atol=1e-5, rtol=0)
        # tie-aware: the lens' float32 logits may lie τ from this pass's (logit_tolerance), so a rival within 2τ
        # of the target may rank on either side of it
        tau = logit_tolerance(model, logits)
        for t, rank in zip(range(p, len(ids)), lens.rank[-1], strict=True):
            low, high = rank_bounds(logp[t - 1], ids[t], tau)
            assert low <= rank <= high, (t, rank, low, high)


def test_middle_layer_reads_the_residual_stream(pair):
    """Layer 1 of the lens = final norm + unembedding of HF's hidden_states[1] (the stream after decoder layer 1)."""
    row = encode(pair.tokenizer, PROMPT, ANSWER, max_length=128)
    p, ids = row.score_from, row.input_ids
    result = logit_lens(pair, PROMPT, ANSWER)
    model = model_of(pair, "base")
    with torch.no_grad():
        stream = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in (0, 1):
            logp = torch.log_softmax(unembedding(model)(final_norm(model)(stream[layer][0])), dim=-1)
            expected = [logp[t - 1, ids[t]].item() for t in range(p, len(ids))]
            assert result.base.logprob[layer] == pytest.approx(expected, abs=1e-5)


def test_accessors_and_unknown_architecture(pair):
    model = model_of(pair, "base")
    assert len(decoder_layers(model)) == 2
    with pytest.raises(UserError, match="llama-style"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_hidden_knowledge_score_definition():
    """Mean over tokens per layer; peak over decoder layers (not the embeddings); score = peak − final."""
    lens = LensSide(
        logprob=[[0.0, 0.0], [-3.0, -1.0], [-0.5, -0.5], [-6.0, -4.0]],
        rank=[[1, 1], [9, 2], [1, 1], [40, 30]],
        top_token=[["a", "b"]] * 4,
    )
    result = LensResult("p", "a", False, ["x", "y"], [0, 1, 2, 3], lens, lens)
    knowledge = hidden_knowledge_score(result, "unlearned")
    assert (knowledge.peak_layer, knowledge.peak_logprob, knowledge.final_logprob) == (2, -0.5, -5.0)
    assert knowledge.score == pytest.approx(4.5) and knowledge.peak_mean_rank == 1.0
    assert json.loads(result.to_json())["hidden_knowledge"]["base"]["score"] == pytest.approx(4.5)


def test_lens_result_round_trip_and_frame(pair):
    result = logit_lens(pair, PROMPT, ANSWER)
    assert LensResult.from_json(result.to_json()) == result
    frame = result.to_frame()
    assert len(frame) == 2 * len(result.layers) * len(result.answer_tokens)
    assert set(frame.columns) >= {"side", "layer", "token", "logprob", "prob", "rank", "top_token"}


def test_drift_of_a_model_against_itself_is_zero():
    model = make_tiny_llama()
    same = ModelPair.from_models(model, model, TinyTokenizer())
    result = hidden_state_drift(same, {"forget": FORGET, "retain": RETAIN}, batch_size=2)
    for drift in result.sets.values():
        assert drift.cosine == pytest.approx([1.0] * 3, abs=1e-6)
        assert drift.norm_change == pytest.approx([0.0] * 3, abs=1e-6)
        assert drift.distance == pytest.approx([0.0] * 3, abs=1e-6)
    assert result.sets["forget"].n_items == 3 and DriftResult.from_json(result.to_json()) == result


def test_drift_matches_unbatched_hidden_states(pair):
    """Padded batches of 2 give the mean over items of per-item token means, computed here one item at a time."""
    result = hidden_state_drift(pair, {"forget": FORGET}, batch_size=2)
    per_item = []
    for prompt, answer in FORGET:
        ids = torch.tensor([encode(pair.tokenizer, prompt, answer, max_length=128).input_ids])
        with torch.no_grad():
            hb = model_of(pair, "base")(ids, output_hidden_states=True).hidden_states
            hu = model_of(pair, "unlearned")(ids, output_hidden_states=True).hidden_states
        layers = []
        for b, u in zip(hb[:-1], hu[:-1], strict=True):
            b, u = b[0], u[0]
            cosine = torch.nn.functional.cosine_similarity(b, u, dim=-1).mean().item()
            norm_change = ((u.norm(dim=-1) - b.norm(dim=-1)) / b.norm(dim=-1)).mean().item()
            distance = ((u - b).norm(dim=-1) / b.norm(dim=-1)).mean().item()
            layers.append([cosine, norm_change, distance])
        per_item.append(layers)
    expected = torch.tensor(per_item).mean(0)  # [layers (the last one is post-norm in HF), 3]
    drift = result.sets["forget"]
    got = torch.tensor([drift.cosine, drift.norm_change, drift.distance]).T[:-1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    frame = result.to_frame()
    assert list(frame["layer"]) == [0, 1, 2] and set(frame["set"]) == {"forget"}


def test_weight_change_of_a_model_against_itself_is_zero():
    model = make_tiny_llama()
    result = weight_change(ModelPair.from_models(model, model, TinyTokenizer()))
    assert result.changes and all(c.relative_change == 0.0 for c in result.changes)


def test_weight_change_of_two_dense_models(pair):
    result = weight_change(pair)
    base, unlearned = (
        dict(model_of(pair, "base").named_parameters()),
        dict(model_of(pair, "unlearned").named_parameters()),
    )
    for change in result.changes:
        w0, w1 = base[change.name].double(), unlearned[change.name].double()
        if w0.norm() == 0:  # GPT-2's biases start at zero in both models
            assert torch.equal(w0, w1) and change.relative_change == 0.0
            continue
        assert change.relative_change == pytest.approx(((w1 - w0).norm() / w0.norm()).item(), rel=1e-6)
        assert change.source == "weights"
    layered = [c for c in result.changes if c.layer is not None]
    assert {c.layer for c in layered} == {0, 1}
    assert WeightChangeResult.from_json(result.to_json()) == result
    assert len(result.to_frame()) == len(result.changes)


def relative(new: torch.Tensor, old: torch.Tensor) -> float:
    """‖new − old‖/‖old‖, 0 for an unchanged all-zero tensor (GPT-2's initial biases)."""
    delta = (new - old).norm()
    return 0.0 if delta == 0 else (delta / old.norm()).item()


def save_adapter(model_dir: Path, out: Path, seed: int, **options) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False, **options
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


def merged_parameters(model_dir: Path, adapter: Path | None) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {name: tensor.detach().double() for name, tensor in model.named_parameters()}


@pytest.mark.parametrize("base_has_adapter", [False, True])
def test_lora_weight_change_equals_the_merged_difference(tmp_path, base_has_adapter):
    """Read from B·A·scaling on a shared backbone; checked against merged copies made here."""
    model_dir = save_tiny_model_dir(tmp_path / "model")
    adapter_b = save_adapter(model_dir, tmp_path / "a1", seed=1) if base_has_adapter else None
    adapter_u = save_adapter(model_dir, tmp_path / "a2", seed=2)
    base_spec = ModelSpec(str(model_dir), adapter=str(adapter_b) if adapter_b else None)
    pair = ModelPair.load(base_spec, ModelSpec(str(model_dir), adapter=str(adapter_u)))
    assert pair.shares_backbone
    result = weight_change(pair)
    w0, w1 = merged_parameters(model_dir, adapter_b), merged_parameters(model_dir, adapter_u)
    for change in result.changes:
        expected = relative(w1[change.name], w0[change.name])
        assert change.relative_change == pytest.approx(expected, rel=1e-6, abs=1e-12)
    adapted = {c.name for c in result.changes if c.source == "adapter"}
    assert adapted == {
        f"model.layers.{i}.{m}.weight"
        for i in (0, 1)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    }
    assert all(c.relative_change > 0 for c in result.changes if c.name in adapted)


def test_lora_on_gpt2_conv1d_is_read_in_the_stored_orientation():
    """GPT-2's Conv1D stores W transposed (fan_in_fan_out): the LoRA term must follow."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_gpt2(seed=0)
    config = LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    torch.manual_seed(4)
    adapted = get_peft_model(copy.deepcopy(base), config)
    merged = {n: t.detach().double() for n, t in copy.deepcopy(adapted).merge_and_unload().named_parameters()}
    result = weight_change(ModelPair.from_models(base, adapted.get_base_model(), TinyTokenizer()))
    weights = {n: t.detach().double() for n, t in base.named_parameters()}
    for change in result.changes:
        expected = relative(merged[change.name], weights[change.name])
        assert change.relative_change == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert {c.name for c in result.changes if c.relative_change > 0} == {
        f"transformer.h.{i}.attn.c_attn.weight" for i in (0, 1)
    }


def test_dora_adapter_is_a_user_error(tmp_path):
    model_dir = save_tiny_model_dir(tmp_path / "model")
    adapter = save_adapter(model_dir, tmp_path / "dora", seed=1, use_dora=True)
    pair = ModelPair.load(ModelSpec(str(model_dir)), ModelSpec(str(model_dir), adapter=str(adapter)))
    with pytest.raises(UserError, match="DoRA"):
        weight_change(pair)


def test_bad_input_is_a_user_error(pair):
    with pytest.raises(UserError, match="answer is empty"):
        logit_lens(pair, PROMPT, " ")
    with pytest.raises(UserError, match="non-empty set"):
        hidden_state_drift(pair, {"forget": FORGET, "retain": []})


def test_cli_json(tmp_path, capsys):
    base, unlearned = save_tiny_model_dir(tmp_path / "a", seed=0), save_tiny_model_dir(tmp_path / "b", seed=1)
    parser = argparse.ArgumentParser()
    add_lens_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "lens",
            *pair_args(base, unlearned, "the capital of france is", "paris"),
            "--json",
        ]
    )
    assert args.handler(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["layers"] == [0, 1, 2] and payload["answer_tokens"] == ["paris"]
    assert len(payload["unlearned"]["rank"]) == 3 and {"base", "unlearned"} == set(payload["hidden_knowledge"])


def run_cli(argv: list[str], capsys) -> dict:
    parser = argparse.ArgumentParser()
    add_lens_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lens", *argv, "--json"])
    assert args.handler(args) == 0
    return json.loads(capsys.readouterr().out)


def write_jsonl(path: Path, items: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in items))
    return path


def test_cli_drift_and_weights_views_equal_the_library(tmp_path, capsys):
    base, unlearned = save_tiny_model_dir(tmp_path / "a", seed=0), save_tiny_model_dir(tmp_path / "b", seed=1)
    forget, retain = write_jsonl(tmp_path / "forget.jsonl", FORGET), write_jsonl(tmp_path / "retain.jsonl", RETAIN)
    pair_args = ["--base", str(base), "--unlearned", str(unlearned)]
    drift = run_cli(
        [*pair_args, "--view", "drift", "--forget", str(forget), "--retain", str(retain), "--items", "2"], capsys
    )
    pair = ModelPair.load(ModelSpec(str(base)), ModelSpec(str(unlearned)))
    direct = hidden_state_drift(pair, {"forget": FORGET[:2], "retain": RETAIN[:2]})
    assert DriftResult.from_dict(drift).sets["forget"].n_items == 2
    for name in ("forget", "retain"):
        for key in ("cosine", "norm_change", "distance"):
            assert getattr(DriftResult.from_dict(drift).sets[name], key) == pytest.approx(
                getattr(direct.sets[name], key), abs=1e-6
            )
    weights = WeightChangeResult.from_dict(run_cli([*pair_args, "--view", "weights"], capsys))
    expected = weight_change(pair)
    assert [c.name for c in weights.changes] == [c.name for c in expected.changes]
    assert [c.relative_change for c in weights.changes] == pytest.approx([c.relative_change for c in expected.changes])
    assert max(c.relative_change for c in weights.changes) > 0.1  # two random models differ everywhere


def test_cli_views_bad_input_is_a_user_error(tmp_path, capsys):
    model = str(save_tiny_model_dir(tmp_path / "a", seed=0))
    with pytest.raises(UserError, match="needs --prompt and --answer"):
        run_cli(["--base", model, "--unlearned", model], capsys)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError):
        run_cli(["--base", model, "--unlearned", model, "--view", "drift", "--forget", str(empty)], capsys)
    with pytest.raises(UserError, match="at least 1"):
        drift_sets({}, 0)
    with pytest.raises(UserError, match="demo retain set is missing"):
        drift_sets({"forget": str(write_jsonl(tmp_path / "f.jsonl", FORGET))}, 2, demo=[])
