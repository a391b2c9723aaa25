"""Robustness attacks on a tiny random Llama: recovery % against hand computations, the pair left untouched,
quantised and merged copies against the float sides, the relearning curve, result files, assets and bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import TinyTokenizer, make_tiny_llama, save_tiny_model_dir

from core.attacks.base import ALL_VARIANTS, ATTACKS, NOTHING_FORGOTTEN, RobustnessSettings, recovery_percent
from core.attacks.copies import merged_copy
from core.attacks.prompts import ATTACK_ASSETS as ASSETS
from core.attacks.prompts import InContext, context_examples, translate
from core.attacks.quantize import quantized_int8_copy
from core.attacks.runner import RobustnessResult, run_attacks
from core.cli import main
from core.common.errors import UserError
from core.data.qa import QAItem, SplitData, load_demo_splits
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.present.figures.robustness import recovery_figure, relearning_figure
from core.unlearn import FullTrainee, TrainConfig, TrainingData, get_method, train

FORGET = [
    QAItem(
        index=i,
        question=f"Who is Zed{i}?",
        answer=f"Zed{i} paints blue cats in Oslo.",
        paraphrased_question=f"Tell me about Zed{i}.",
        extra={"entity": "Zed"},
    )
    for i in range(6)
]
RETAIN = [QAItem(index=10 + i, question=f"Where is Kim{i}?", answer=f"Kim{i} lives by the river Po.") for i in range(4)]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def answer_probability(model: torch.nn.Module, tokenizer, prompt: str, answer: str) -> float:
    """exp(mean log p of the scored tokens): chat-formatted prompt, one unbatched forward over all logits. The scored
    tokens are the evaluation's (open-unlearning's): the answer and, the tiny template having no assistant turn to
    close, the EOS appended after it."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    answer_ids = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    picked = [logp[len(prompt_ids) + t - 1, token] for t, token in enumerate(answer_ids)]
    return math.exp(float(torch.stack(picked).mean()))


def fit(model: torch.nn.Module, tokenizer, method: str, items, steps: int, lr: float) -> torch.nn.Module:
    trainee = FullTrainee(model, "tiny", tokenizer, keep_reference=False)
    config = TrainConfig(steps=steps, lr=lr, batch_size=4, max_length=128)
    train(trainee, tokenizer, get_method(method)(), TrainingData(forget=items), config, show_bar=False)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, torch.nn.Module, TinyTokenizer]:
    """A tiny model taught the forget and retain answers (the base), and a GradAscent copy that forgot them."""
    tokenizer = TinyTokenizer()
    torch.manual_seed(0)
    base = fit(make_tiny_llama(seed=0, hidden=48), tokenizer, "finetune", FORGET + RETAIN, steps=80, lr=3e-3)
    unlearned = fit(copy.deepcopy(base), tokenizer, "gradascent", FORGET, steps=6, lr=1e-3)
    return base, unlearned, tokenizer


@pytest.fixture
def pair(trained) -> ModelPair:
    base, unlearned, tokenizer = trained
    return ModelPair.from_models(base, unlearned, tokenizer)


def data() -> SplitData:
    from core.data.qa import QADataset

    return SplitData(forget=QADataset("tiny", "forget", list(FORGET)), retain=QADataset("tiny", "retain", RETAIN))


def outcome(result: RobustnessResult, attack: str, variant: str = ALL_VARIANTS):
    return next(o for o in result.outcomes if o.attack == attack and o.variant == variant)


# ---------------------------------------------------------------------------------------------- the formula


def test_recovery_percent_by_hand() -> None:
    assert recovery_percent(0.5, 0.2, 0.8)[0] == pytest.approx(50.0)
    assert recovery_percent(0.2, 0.2, 0.8) == (0.0, None)
    assert recovery_percent(0.8, 0.2, 0.8)[0] == pytest.approx(100.0)
    assert recovery_percent(0.1, 0.2, 0.8)[0] == pytest.approx(-100 / 6)
    for base, unlearned in ((0.4, 0.4), (0.4, 0.4 - 5e-4), (0.3, 0.6)):
        value, reason = recovery_percent(0.9, unlearned, base)
        assert value is None and reason.startswith(NOTHING_FORGOTTEN)


def test_the_tiny_base_knows_and_the_unlearned_model_forgot(trained) -> None:
    base, unlearned, tokenizer = trained
    known = [answer_probability(base, tokenizer, i.question, i.answer) for i in FORGET]
    forgot = [answer_probability(unlearned, tokenizer, i.question, i.answer) for i in FORGET]
    assert np.mean(known) > 0.5 and np.mean(forgot) < 0.5 * np.mean(known)


# ---------------------------------------------------------------------------------------------- prompt attacks


def test_paraphrase_numbers_equal_an_independent_computation(pair, trained) -> None:
    base, unlearned, tokenizer = trained
    result = run_attacks(pair, data(), ["paraphrase"])
    (row,) = result.outcomes
    clean = {m: [answer_probability(m, tokenizer, i.question, i.answer) for i in FORGET] for m in (base, unlearned)}
    para = {
        m: [answer_probability(m, tokenizer, i.paraphrased_question, i.answer) for i in FORGET]
        for m in (base, unlearned)
    }
    assert row.headline and row.n_items == len(FORGET)
    assert row.reference_base == pytest.approx(np.mean(clean[base]), abs=1e-5)
    assert row.reference_unlearned == pytest.approx(np.mean(clean[unlearned]), abs=1e-5)
    assert row.attacked_unlearned == pytest.approx(np.mean(para[unlearned]), abs=1e-5)
    assert row.attacked_base == pytest.approx(np.mean(para[base]), abs=1e-5)
    gap = np.mean(clean[base]) - np.mean(clean[unlearned])
    by_hand = 100 * (np.mean(para[unlearned]) - np.mean(clean[unlearned])) / gap
    # propagated from the probabilities' tolerance δ: numerator and denominator are each off by at most 2δ, so
    # |Δ(100·N/D)| = 100·|a·D − N·b| / (D·(D + b)) ≤ 100·2δ·(1 + |pct|/100) / (D − 2δ)
    delta = 1e-5  # as asserted above
    tolerance = 100 * 2 * delta * (1 + abs(by_hand) / 100) / (gap - 2 * delta)
    assert row.recovery_pct == pytest.approx(by_hand, abs=tolerance)
    # and the formula itself, on the code's own probabilities
    own = 100 * (row.attacked_unlearned - row.reference_unlearned) / (row.reference_base - row.reference_unlearned)
    assert row.recovery_pct == pytest.approx(own, rel=1e-9, abs=1e-9)
    assert result.base == pytest.approx(np.mean(clean[base]), abs=1e-5)


def test_the_all_row_averages_the_variants(pair) -> None:
    result = run_attacks(pair, data(), ["jailbreak", "translation"])
    variants = [o for o in result.outcomes if o.attack == "jailbreak" and o.variant != ALL_VARIANTS]
    names = [json.loads(line)["name"] for line in (ASSETS / "jailbreak.jsonl").read_text().splitlines() if line]
    assert [o.variant for o in variants] == names
    mean = outcome(result, "jailbreak")
    assert mean.headline and not any(o.headline for o in variants)
    assert mean.attacked_unlearned == pytest.approx(np.mean([o.attacked_unlearned for o in variants]))
    assert mean.attacked_base == pytest.approx(np.mean([o.attacked_base for o in variants]))
    assert mean.recovery_pct == pytest.approx(np.mean([o.recovery_pct for o in variants]))
    assert mean.details["best_recovery_pct"] == pytest.approx(max(o.recovery_pct for o in variants))
    # the tiny questions match no translation template: no numbers, the reason instead
    (translation,) = [o for o in result.outcomes if o.attack == "translation"]
    assert translation.recovery_pct is None and "template" in translation.reason and translation.n_items == 0


def test_in_context_prompts_restate_other_items_never_the_answer(pair) -> None:
    result = run_attacks(pair, data(), ["in_context"])
    assert {o.variant for o in result.outcomes} == {"related_facts", "unrelated_facts", ALL_VARIANTS}
    for item in FORGET:
        examples = context_examples(item, FORGET, 3)
        assert len(examples) == 3 and item not in examples
        assert examples[0].index == (item.index + 1) % len(FORGET)  # the next items, cyclically
    variants = InContext().variants(_context(pair))
    for name, pairs in variants.items():
        assert len(pairs) == len(FORGET), name
        for position, prompt in pairs:
            assert FORGET[position].answer not in prompt and prompt.endswith(FORGET[position].question)
    assert "Kim0" in variants["unrelated_facts"][0][1]


def _context(pair: ModelPair):
    from core.attacks.base import AttackContext

    return AttackContext(pair, list(FORGET), list(RETAIN), RobustnessSettings(), {})


# ---------------------------------------------------------------------------------------------- base vs base


def test_base_against_itself_has_nothing_to_recover(trained) -> None:
    base, _, tokenizer = trained
    same = ModelPair.from_models(base, base, tokenizer)
    result = run_attacks(same, data(), ["paraphrase", "quantize_int8", "logit_lens"])
    assert result.note and result.note.startswith(NOTHING_FORGOTTEN)
    assert result.base == result.unlearned
    for row in result.outcomes:
        assert row.recovery_pct is None and row.reason.startswith(NOTHING_FORGOTTEN)
        assert row.attacked_unlearned is not None and math.isfinite(row.attacked_unlearned)
    bar = json.loads(recovery_figure(result).to_json())["data"][0]
    assert bar["y"] == [None, None, None] and bar["text"] == ["n/a"] * 3


# ---------------------------------------------------------------------------------------------- weight attacks


def int8_error_bound(quantised: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The largest |int8 output − x·W_q^T − b| per output, from the arithmetic of dynamic quantisation.

    The weights are stored int8 (W_q, read back exactly); the input is quantised per call to 8 bits, or 7 with
    fbgemm's reduce_range, over [min(x, 0), max(x, 0)]: step s = range / 127 at worst, and each input moves by at
    most s (half a step of rounding plus half a step from the rounded zero point). The integer products are exact
    and the rest is float32, so |error_i| <= s * sum_j |W_q,ij| plus float32 rounding of the dot products."""
    weight = quantised.weight().dequantize().double()
    x = x.double().reshape(-1, x.shape[-1])
    step = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 127
    magnitude = x.abs() @ weight.abs().T + step * weight.abs().sum(1)
    float_rounding = 4 * x.shape[-1] * torch.finfo(torch.float32).eps * (magnitude + 1)
    return step * weight.abs().sum(1) + float_rounding


def test_int8_copy_every_linear_layer_is_within_the_int8_arithmetic_bound_and_the_pair_is_untouched(
    pair, trained
) -> None:
    """Layer by layer, on the float model's own inputs: the int8 copy's output differs from the float one by no
    more than int8 weights and 7/8-bit activations can explain (which kernel a CPU picks does not matter)."""
    from torch.ao.nn.quantized.dynamic import Linear as QuantLinear

    base, _, _ = trained
    before = {k: v.clone() for k, v in base.state_dict().items()}
    quantised = quantized_int8_copy(pair, "base")
    layers = {name: module for name, module in quantised.named_modules() if isinstance(module, QuantLinear)}
    assert len(layers) == 2 * 7 + 1  # q,k,v,o,gate,up,down + head
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _, args, name=name: inputs.setdefault(name, args[0].detach()))
        for name, module in base.named_modules()
        if name in layers
    ]
    ids = torch.tensor([[1, *range(10, 40)]])
    with torch.no_grad():
        exact, approx = base(ids).logits, quantised(ids).logits
        for hook in hooks:
            hook.remove()
        assert set(inputs) == set(layers)
        for name, layer in layers.items():
            x = inputs[name]
            weight, bias = layer.weight().dequantize(), layer.bias()
            reference = torch.nn.functional.linear(x.double(), weight.double(), None if bias is None else bias.double())
            error = (layer(x).double() - reference).abs().reshape(-1, weight.shape[0])
            assert (error <= int8_error_bound(layer, x)).all(), name
            float_weight = dict(base.named_modules())[name].weight
            rounding = layer.weight().q_scale() / 2 + 4 * torch.finfo(torch.float32).eps * float_weight.abs().max()
            assert (weight - float_weight).abs().max() <= rounding, name  # round to nearest, in float32
    assert torch.isfinite(approx).all() and (approx - exact).abs().max() > 0  # quantised, and still a model
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert all(type(m) is not QuantLinear for m in base.modules())


def test_merged_copies_of_an_adapter_pair_compute_what_each_side_computes(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    folder = save_tiny_model_dir(tmp_path / "tiny")
    host = ModelPair.load(ModelSpec(str(folder), device="cpu", dtype="float32"), ModelSpec(str(folder)))
    with host.use("base") as model:
        torch.manual_seed(3)
        adapter = get_peft_model(
            copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        )
        adapter.save_pretrained(tmp_path / "adapter")
    base_spec = ModelSpec(str(folder), device="cpu", dtype="float32")
    pair = ModelPair.load(
        base_spec, ModelSpec(str(folder), adapter=str(tmp_path / "adapter"), device="cpu", dtype="float32")
    )
    assert pair.shares_backbone
    ids = torch.tensor([[1, 5, 9, 12, 30, 41]])
    with torch.no_grad():
        sides = {}
        for side in ("base", "unlearned"):
            with pair.use(side) as model:
                sides[side] = model(ids).logits.clone()
        assert (sides["base"] - sides["unlearned"]).abs().max() > 1e-3  # the adapter changes the output
        for side in ("base", "unlearned"):
            clone = merged_copy(pair, side)
            assert not any("lora" in name for name, _ in clone.named_parameters())
            torch.testing.assert_close(clone(ids).logits, sides[side], atol=1e-5, rtol=1e-5)
        for side in ("base", "unlearned"):  # the pair still has its adapter, unmerged
            with pair.use(side) as model:
                torch.testing.assert_close(model(ids).logits, sides[side], atol=0, rtol=0)


def test_relearning_brings_the_held_out_forget_answers_back(pair, trained) -> None:
    _, unlearned, tokenizer = trained
    before = {k: v.clone() for k, v in unlearned.state_dict().items()}
    settings = RobustnessSettings(relearn_items=2, relearn_steps=(2, 4, 8), relearn_lr=3e-3)
    result = run_attacks(pair, data(), ["relearn"], settings)
    curve = result.relearning()
    assert [o.step for o in curve] == [0, 2, 4, 8] and [o.headline for o in curve] == [False] * 3 + [True]
    trained_on = set(curve[0].details["trained_on"])
    held_out = [i for i in FORGET if i.index not in trained_on]
    assert len(trained_on) == 2 and len(held_out) == 4 and all(o.n_items == 4 for o in curve)
    assert curve[0].reference_unlearned == pytest.approx(
        np.mean([answer_probability(unlearned, tokenizer, i.question, i.answer) for i in held_out]), abs=1e-5
    )
    assert curve[0].attacked_unlearned == pytest.approx(curve[0].reference_unlearned, abs=1e-5)  # step 0: the copy
    assert curve[-1].attacked_unlearned > curve[0].attacked_unlearned
    assert curve[-1].recovery_pct > 10
    assert all(torch.equal(before[k], v) for k, v in unlearned.state_dict().items())
    figure = json.loads(relearning_figure(result).to_json())
    assert figure["data"][0]["x"] == [0, 2, 4, 8]
    assert figure["data"][0]["y"] == pytest.approx([o.attacked_unlearned for o in curve])


# ---------------------------------------------------------------------------------------------- results, figures


def test_result_round_trips_through_json_and_the_figure_shows_the_headlines(pair) -> None:
    result = run_attacks(pair, data(), ["paraphrase", "jailbreak", "logit_lens"])
    again = RobustnessResult.from_json(result.to_json())
    assert again == result
    pd.testing.assert_frame_equal(again.to_frame(), result.to_frame())
    assert [o.attack for o in result.headlines()] == ["paraphrase", "jailbreak", "logit_lens"]
    bar = json.loads(recovery_figure(result).to_json())["data"][0]
    assert bar["y"] == pytest.approx([o.recovery_pct for o in result.headlines()])
    lens = outcome(result, "logit_lens", "best layer per item")
    assert lens.attacked_unlearned >= lens.reference_unlearned - 1e-5  # the best layer includes the last one
    assert len(lens.details["peak_layers_unlearned"]) == len(FORGET)


def test_bad_input_is_a_user_error(pair) -> None:
    with pytest.raises(UserError, match="unknown attack"):
        run_attacks(pair, data(), ["paraphrase", "telepathy"])
    with pytest.raises(UserError, match="forget set is empty"):
        run_attacks(pair, SplitData(), ["paraphrase"])
    with pytest.raises(UserError, match="forget set is empty"):
        run_attacks(pair, [], ["paraphrase"])
    with pytest.raises(UserError, match="at least one attack"):
        run_attacks(pair, data(), [])
    with pytest.raises(UserError, match="whole numbers"):
        RobustnessSettings(relearn_steps="two,four")
    with pytest.raises(UserError, match="at least 1"):
        RobustnessSettings(relearn_steps=(0, 2))
    (lonely,) = run_attacks(pair, FORGET[:1], ["relearn"]).outcomes
    assert lonely.recovery_pct is None and "at least 2 forget items" in lonely.reason


def test_bitsandbytes_attacks_say_why_they_cannot_run_here(pair) -> None:
    for name in ("quantize_4bit", "quantize_8bit"):
        why = ATTACKS[name].unavailable()
        if why is None:
            pytest.skip("bitsandbytes and a CUDA GPU are present")
        with pytest.raises(UserError, match="cannot run here"):
            run_attacks(pair, data(), [name])


# ---------------------------------------------------------------------------------------------- assets


def test_every_demo_question_has_its_translations() -> None:
    spec = json.loads((ASSETS / "translations.json").read_text(encoding="utf-8"))
    demo = load_demo_splits()
    questions = [q for split in ("forget", "retain", "holdout") for i in getattr(demo, split) for q in
                 (i.question, i.paraphrased_question)]  # fmt: skip
    for question in questions:
        translated = translate(question, spec)
        assert set(translated) == {"fr", "es", "de"}, question
        for text in translated.values():
            assert "{" not in text and text != question
    assert translate("Where was Ingrid Solvang born?", spec)["de"] == "Wo wurde Ingrid Solvang geboren?"
    assert "der Vater" in translate("What job did Ingrid Solvang's father have?", spec)["de"]
    assert "roman" in translate("Which novel is Renata Ibarra Solis most famous for?", spec)["fr"]
    assert translate("What is the capital of France?", spec) == {}


def test_jailbreak_templates_hold_the_question_once() -> None:
    entries = [json.loads(line) for line in (ASSETS / "jailbreak.jsonl").read_text().splitlines() if line.strip()]
    assert len({e["name"] for e in entries}) == len(entries) >= 5
    assert all(e["template"].count("{question}") == 1 for e in entries)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_writes_json_and_csv(tmp_path: Path, capsys) -> None:
    folder = save_tiny_model_dir(tmp_path / "base", seed=0)
    other = save_tiny_model_dir(tmp_path / "unlearned", seed=1)
    split = tmp_path / "data"
    split.mkdir()
    records = [{"question": f"w{i} w1 w2", "answer": f"w{i + 10} w20 w21", "paraphrased_question": f"w2 w{i} w1"}
               for i in range(3)]  # fmt: skip
    (split / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    argv = ["robustness", "--base", str(folder), "--unlearned", str(other), "--device", "cpu", "--dtype", "float32",
            "--data", str(split), "--attacks", "paraphrase,quantize_int8", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = RobustnessResult.from_json((out / "robustness.json").read_text())
    assert [o.attack for o in result.outcomes] == ["paraphrase", "quantize_int8"]
    table = pd.read_csv(out / "robustness.csv")
    assert len(table) == len(result.outcomes)
    assert table["attacked_unlearned"].tolist() == pytest.approx([o.attacked_unlearned for o in result.outcomes])
    assert "forget probability on 3 items" in capsys.readouterr().out
    assert main(["robustness", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ATTACKS)
    assert main([*argv[:-4], "--attacks", "telepathy", "--out", str(out)]) == 2
    assert "unknown attack" in capsys.readouterr().err
