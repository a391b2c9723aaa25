"""Every feature on a tiny random model of every supported family (families.py), each against a direct
transformers computation: probe, generate, attribution, logit lens (through the model's own head: Gemma-2's
soft-capping, Cohere's and Granite's logit scales, OPT's project_out), drift, weight map, evaluate, robustness and
RMU's layer choice; a LoRA adapter on two families; an unknown layout is a UserError naming the class."""

from __future__ import annotations

import math

import pytest
import torch
from families import FAMILIES, FULL_FEATURES, hand_head, layer_prefix, make_model, mlp_output, unlearned_copy
from tiny_models import TinyTokenizer, logit_tolerance, top_margin

import core.analyses.lens.logit as lens_module
from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.lens import hidden_state_drift, logit_lens, weight_change
from core.analyses.probe import GenerationSettings, ProbeRequest, generate, score
from core.attacks.runner import run_attacks
from core.common.errors import UserError
from core.data.qa import QADataset, QAItem, SplitData
from core.evaluation.evaluate import evaluate_model
from core.evaluation.settings import EvalSettings
from core.models.pair import ModelPair
from core.scoring.encoding import encode
from core.unlearn import FullTrainee, TrainConfig, TrainingData, get_method, train

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT, ANSWER = "the capital of france is", " paris."
ITEMS = [QAItem(index=i, question=f"who is zed{i}?", answer=f" zed{i} paints cats.") for i in range(3)]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def models(family):
    base = make_model(family, seed=0)
    return base, unlearned_copy(family, base)


@pytest.fixture
def pair(models) -> ModelPair:
    return ModelPair.from_models(*models, TinyTokenizer())


def full_only(family: str) -> None:
    if family not in FULL_FEATURES:
        pytest.skip(f"{family} is checked in the layer view only")


def direct_logprobs(model: torch.nn.Module, ids: list[int], start: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(start, len(ids))])


def tolerance(model: torch.nn.Module, ids: list[int]) -> float:
    """τ for log-probs: logit_tolerance, twice (the log-sum-exp moves by at most the largest logit's error)."""
    with torch.no_grad():
        return 2 * logit_tolerance(model, model(torch.tensor([ids])).logits)


def test_probe_matches_the_models_log_probs(family, pair, models):
    full_only(family)
    row = encode(pair.tokenizer, PROMPT, ANSWER, max_length=128)
    (result,) = score(pair, [ProbeRequest(PROMPT, ANSWER)], top_k=3)
    for side, model in zip(("base", "unlearned"), models, strict=True):
        expected = direct_logprobs(model, row.input_ids, row.score_from)
        got = torch.tensor([getattr(t, f"logprob_{side}") for t in result.tokens], dtype=torch.float64)
        torch.testing.assert_close(got, expected, atol=tolerance(model, row.input_ids), rtol=0)


def test_greedy_generation_matches_transformers_generate(family, pair, models):
    full_only(family)
    settings = GenerationSettings(max_new_tokens=6)
    result = generate(pair, PROMPT, chat=False, settings=settings)
    ids = encode(pair.tokenizer, PROMPT, None, max_length=128).input_ids
    base = models[0]
    with torch.no_grad():
        logits = base(torch.tensor([ids])).logits[0, -1]
        out = base.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    if top_margin(logits) <= 2 * logit_tolerance(base, logits):
        pytest.skip("the first greedy choice is a near tie on this seed")
    expected = pair.tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
    assert result.base_text.startswith(expected[:1])  # the first token is a clear argmax; later ones may tie
    first = pair.tokenizer.decode([int(logits.argmax())], skip_special_tokens=True)
    assert result.base_text.startswith(first)


def test_input_x_gradient_matches_autograd(family, pair, models):
    full_only(family)
    row = encode(pair.tokenizer, PROMPT, ANSWER, max_length=128)
    ids, p = row.input_ids, row.score_from
    result = attribute(pair, PROMPT, ANSWER, "input_x_gradient", settings=AttributionSettings(per_token=False))
    model = models[1]
    x = model.get_input_embeddings()(torch.tensor([ids[:-1]])).detach().requires_grad_(True)
    logp = torch.log_softmax(model(inputs_embeds=x).logits[0].double(), dim=-1)
    total = sum(logp[t - 1, ids[t]] for t in range(p, len(ids)))
    (grad,) = torch.autograd.grad(total, x)
    expected = (grad * x)[0, 1:p].sum(-1).detach()  # BOS is special: fed, not attributed
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        torch.tensor(result.unlearned[0], dtype=torch.float64), expected.double(), atol=1e-4 * max(scale, 1), rtol=0
    )


def test_integrated_gradients_completeness(family, pair):
    full_only(family)
    result = attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(baseline="eos", n_steps=16))
    for side in ("base", "unlearned"):
        total = sum(getattr(result, side)[0])
        gap = result.logprob[side][0] - result.baseline_logprob[side][0]
        assert abs(total - gap) <= abs(result.convergence_delta[side][0]) + 1e-4 * max(1.0, abs(gap))


@pytest.mark.parametrize("chunked", [False, True])
def test_logit_lens_reads_through_the_models_own_head(family, pair, models, monkeypatch, chunked):
    """Last layer = the model's own log-probs (soft-capping and logit scales included); every layer = the family's
    head written out by hand over transformers' hidden_states (pre-norm for all but the last)."""
    if chunked:  # one layer per chunk: every chunk after the first is read in a pass of its own
        monkeypatch.setattr(lens_module, "LENS_CHUNK_ELEMENTS", 1)
    row = encode(pair.tokenizer, PROMPT, ANSWER, max_length=128)
    ids, p = row.input_ids, row.score_from
    result = logit_lens(pair, PROMPT, ANSWER)
    for side, model in zip(("base", "unlearned"), models, strict=True):
        tau = tolerance(model, ids)
        lens = torch.tensor(getattr(result, side).logprob, dtype=torch.float64)
        assert lens.shape == (model.config.num_hidden_layers + 1, len(ids) - p)
        torch.testing.assert_close(lens[-1], direct_logprobs(model, ids, p), atol=tau, rtol=0)
        with torch.no_grad():
            states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            for layer in range(len(states) - 1):
                logp = torch.log_softmax(hand_head(family, model, states[layer][0]).double(), dim=-1)
                expected = torch.stack([logp[t - 1, ids[t]] for t in range(p, len(ids))])
                torch.testing.assert_close(lens[layer], expected, atol=tau, rtol=0)


def test_drift_matches_transformers_hidden_states(family, pair, models):
    result = hidden_state_drift(pair, {"forget": [(PROMPT, ANSWER)]})
    ids = encode(pair.tokenizer, PROMPT, ANSWER, max_length=128).input_ids
    with torch.no_grad():
        base, unlearned = (m(torch.tensor([ids]), output_hidden_states=True).hidden_states for m in models)
    drift = result.sets["forget"]
    changed = 1  # unlearned_copy perturbs layer 1: the stream is identical up to it
    for layer in range(len(base) - 1):  # transformers' last entry is after the final norm; ours is before it
        cosine = torch.nn.functional.cosine_similarity(base[layer][0], unlearned[layer][0], dim=-1).mean()
        assert drift.cosine[layer] == pytest.approx(float(cosine), abs=1e-5)
        if layer <= changed:
            assert drift.distance[layer] == 0.0
    assert drift.distance[changed + 1] > 0


def test_weight_map_names_the_one_changed_matrix(family, pair, models):
    result = weight_change(pair)
    changed = [c for c in result.changes if c.delta_norm > 0]
    name = f"{layer_prefix(family)}.1.{mlp_output(family)}.weight"
    assert [c.name for c in changed] == [name]
    base, unlearned = (m.get_parameter(name).double() for m in models)
    assert changed[0].layer == 1
    assert changed[0].relative_change == pytest.approx(float((unlearned - base).norm() / base.norm()), rel=1e-6)


def test_evaluate_probability_matches_the_forward_pass(family, models):
    full_only(family)
    tokenizer, model = TinyTokenizer(), models[1]
    logs = evaluate_model(model, tokenizer, SplitData(forget=QADataset("t", "forget", ITEMS)), EvalSettings(chat=False))
    for item in ITEMS:
        row = encode(tokenizer, item.question, item.answer, max_length=128)
        expected = -float(direct_logprobs(model, row.input_ids, row.score_from).mean())
        entry = logs["forget_Q_A_Prob"]["value_by_index"][str(item.index)]
        assert entry["avg_loss"] == pytest.approx(expected, abs=tolerance(model, row.input_ids))


def test_robustness_clean_probabilities_match(family, pair, models):
    full_only(family)
    from core.attacks.base import RobustnessSettings

    result = run_attacks(pair, ITEMS, ["logit_lens"], RobustnessSettings(chat=False))
    for side, model in zip(("base", "unlearned"), models, strict=True):
        probs = []
        for item in ITEMS:
            row = encode(pair.tokenizer, item.question, item.answer, max_length=128)
            probs.append(math.exp(float(direct_logprobs(model, row.input_ids, row.score_from).mean())))
        assert getattr(result, side) == pytest.approx(sum(probs) / len(probs), rel=1e-5)
    assert any(o.attack == "logit_lens" for o in result.outcomes)


def test_rmu_trains_the_mlp_outputs_of_layers_l_minus_2_to_l(family, models):
    full_only(family)
    model = unlearned_copy(family, models[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = get_method("rmu").from_options({"layer": 2, "steering": 2.0, "alpha": 1.0})
    trainee = FullTrainee(model, "tiny", TinyTokenizer(), keep_reference=True)
    data = TrainingData(forget=ITEMS[:2], retain=ITEMS[2:])
    train(trainee, TinyTokenizer(), method, data, TrainConfig(steps=1, lr=1e-2, batch_size=2, chat=False))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    modules = [f"{layer_prefix(family)}.{i}.{mlp_output(family)}" for i in (0, 1, 2)]
    # every parameter of those modules (weight, and bias where the family has one), as WMDP's RMU trains them
    assert moved == {f"{m}.{n}" for m in modules for n, _ in model.get_submodule(m).named_parameters()}


@pytest.mark.parametrize("lora_family", ["llama", "gpt2"])
def test_lora_adapter_pair_matches_the_adapted_model(lora_family, tmp_path):
    """A pair whose unlearned side is a saved LoRA adapter on the shared backbone (attached as ModelPair.load does):
    probe and lens equal PEFT's own adapted forward; the weight map names only the adapted matrices."""
    from peft import LoraConfig, get_peft_model

    from core.models.pair import JobLock, _backbone_sides

    targets = ["q_proj", "v_proj"] if lora_family == "llama" else ["c_attn"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    reference = get_peft_model(make_model(lora_family), config).eval()
    reference.save_pretrained(str(tmp_path / "adapter"))
    row = encode(TinyTokenizer(), PROMPT, ANSWER, max_length=128)
    adapted = direct_logprobs(reference, row.input_ids, row.score_from)
    base = make_model(lora_family)
    sides = _backbone_sides(base, JobLock(), {"base": None, "unlearned": str(tmp_path / "adapter")}, lambda m: None)
    pair = ModelPair(sides, TinyTokenizer(), torch.device("cpu"), torch.float32)
    tau = tolerance(make_model(lora_family), row.input_ids)
    (result,) = score(pair, [ProbeRequest(PROMPT, ANSWER)], top_k=3)
    got = torch.tensor([t.logprob_unlearned for t in result.tokens], dtype=torch.float64)
    torch.testing.assert_close(got, adapted, atol=tau, rtol=0)
    lens = logit_lens(pair, PROMPT, ANSWER)
    torch.testing.assert_close(torch.tensor(lens.unlearned.logprob[-1], dtype=torch.float64), adapted, atol=tau, rtol=0)
    changes = {c.name for c in weight_change(pair).changes if c.delta_norm > 0}
    assert changes and all(any(t in name for t in targets) for name in changes)


def test_unknown_layout_names_the_class():
    class Mystery(torch.nn.Module):
        config = type("C", (), {"model_type": "mystery"})()

    from core.analyses.lens import decoder_layers

    with pytest.raises(UserError, match=r"Mystery \(model_type 'mystery'\)"):
        decoder_layers(Mystery())
