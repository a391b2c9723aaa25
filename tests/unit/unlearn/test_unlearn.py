"""Unlearning methods, loop, checkpoints and CLI on a tiny random Llama: losses against the plain formulas."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import TinyTokenizer, make_tiny_llama, save_tiny_model_dir

from core.cli.unlearn import add_parser as add_unlearn_parser
from core.cli.unlearn import run_unlearn
from core.common.errors import UserError
from core.unlearn import (
    UNLEARNING_METHODS,
    FullTrainee,
    TrainConfig,
    TrainingData,
    build_trainee,
    get_method,
    lora_config,
    read_manifest,
    train,
)
from core.unlearn.methods import RMU
from core.unlearn.trainer import RunContext, draw, step_inputs

FORGET = [SimpleNamespace(question=f"Who is Zed{i}?", answer=f"Zed{i} paints blue cats in Oslo.") for i in range(4)]
RETAIN = [SimpleNamespace(question=f"Where is Kim{i}?", answer=f"Kim{i} lives by the river Po.") for i in range(4)]
REFUSALS = ["I don't know.", "No idea, sorry."]
DATA = TrainingData(FORGET, RETAIN, REFUSALS)
RMU_OPTIONS = {"layer": 1, "steering": 3.0, "alpha": 10.0, "modules": "mlp.down_proj"}


def tiny(hidden: int = 32) -> torch.nn.Module:
    """Three layers, so that RMU's layer 1 is not the last (whose HF hidden state is normalised)."""
    return make_tiny_llama(seed=0, layers=3, hidden=hidden)


def method_for(name: str):
    return get_method(name).from_options(RMU_OPTIONS if name == "rmu" else {})


def answer_logprobs(model: torch.nn.Module, rows) -> list[torch.Tensor]:
    """Per row, log p of each answer token, from one unbatched forward pass over all logits."""
    out = []
    for row in rows:
        logits = model(torch.tensor([row.input_ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        out.append(torch.stack([logp[t - 1, row.input_ids[t]] for t in range(row.score_from, len(row.input_ids))]))
    return out


def answer_logdists(model: torch.nn.Module, rows) -> torch.Tensor:
    """Full next-token log-distributions at every answer-predicting position, all rows concatenated."""
    parts = []
    for row in rows:
        logits = model(torch.tensor([row.input_ids])).logits[0].float()
        parts.append(torch.log_softmax(logits, dim=-1)[row.score_from - 1 : len(row.input_ids) - 1])
    return torch.cat(parts)


def hidden_at(model: torch.nn.Module, rows, layer: int) -> torch.Tensor:
    """Output of decoder layer `layer` (HF hidden_states[layer + 1]) at the answer-predicting positions."""
    parts = []
    for row in rows:
        states = model(torch.tensor([row.input_ids]), output_hidden_states=True).hidden_states[layer + 1][0]
        parts.append(states[row.score_from - 1 : len(row.input_ids) - 1].float())
    return torch.cat(parts)


def nll_mean(logprobs: list[torch.Tensor]) -> torch.Tensor:
    return -torch.cat(logprobs).mean()


def perturbed_full_trainee(method) -> FullTrainee:
    """A full trainee whose weights moved away from its reference copy, so π ≠ π_ref in every formula."""
    model = tiny()
    trainee = FullTrainee(model, "tiny", TinyTokenizer(), keep_reference=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return trainee


def expected_loss(name: str, method, run: RunContext, inputs, picks: torch.Tensor) -> float:
    """The method's formula from unlearning-metrics.md, computed plainly from per-row forward passes."""
    model, ref = run.model, run.reference
    forget = [run.forget_rows[i] for i in inputs.forget_rows.tolist()]
    retain = [run.retain_rows[i] for i in draw_rows(inputs.retain, run.retain_rows)]
    o = method.options
    lp_f = answer_logprobs(model, forget)
    retain_nll = nll_mean(answer_logprobs(model, retain)) if retain else None
    with ref() as reference:
        ref_f = [x.detach() for x in answer_logprobs(reference, forget)]
    if name == "gradascent":
        return -nll_mean(lp_f).item()
    if name == "finetune":
        return nll_mean(lp_f).item()
    if name == "graddiff":
        return (-o.gamma * nll_mean(lp_f) + o.alpha * retain_nll).item()
    if name == "npo":
        ratio = torch.stack([a.sum() - b.sum() for a, b in zip(lp_f, ref_f, strict=True)])
        npo = (2 / o.beta * torch.log1p(torch.exp(o.beta * ratio))).mean()
        return (o.gamma * npo + o.alpha * retain_nll).item()
    if name == "simnpo":
        values = [-(2 / o.beta) * F.logsigmoid(-(o.beta / len(a)) * a.sum() - o.beta * o.delta) for a in lp_f]
        return (o.gamma * torch.stack(values).mean() + o.alpha * retain_nll).item()
    if name == "idk":
        rows = zip(inputs.forget_rows.tolist(), picks, strict=True)
        idk_rows = [run.encode(FORGET[i].question, REFUSALS[p]) for i, p in rows]
        chosen = answer_logprobs(model, idk_rows)
        with ref() as reference:
            chosen_ref = answer_logprobs(reference, idk_rows)
        margins = [
            (c.sum() - cr.sum()) - (a.sum() - ar.sum())
            for c, cr, a, ar in zip(chosen, chosen_ref, lp_f, ref_f, strict=True)
        ]
        dpo = torch.stack([-(2 / o.beta) * F.logsigmoid(o.beta * m) for m in margins]).mean()
        return (o.gamma * dpo + o.alpha * retain_nll).item()
    if name == "rmu":
        u = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(run.seed))
        u = u / u.norm()
        forget_term = ((hidden_at(model, forget, o.layer) - o.steering * u) ** 2).mean()
        with ref() as reference:
            frozen = hidden_at(reference, retain, o.layer)
        retain_term = ((hidden_at(model, retain, o.layer) - frozen) ** 2).mean()
        return (forget_term + o.alpha * retain_term).item()
    raise AssertionError(f"no formula written for {name}")


def draw_rows(batch, rows) -> list[int]:
    """Which encoded retain rows a collated batch holds (matched by token ids)."""
    if batch is None:
        return []
    ids = [row.input_ids for row in rows]
    out = []
    for i in range(batch.input_ids.shape[0]):
        length = int(batch.attention_mask[i].sum())
        out.append(ids.index(batch.input_ids[i, :length].tolist()))
    return out


@pytest.mark.parametrize("name", sorted(UNLEARNING_METHODS))
def test_loss_equals_the_formula(name: str) -> None:
    method = method_for(name)
    trainee = perturbed_full_trainee(method)
    run = RunContext(trainee, TinyTokenizer(), DATA, TrainConfig(batch_size=3, seed=5))
    with torch.no_grad():
        method.prepare(run)
    inputs = step_inputs(run, method, step=2)
    generator_state = inputs.generator.get_state()
    got = method.loss(run, inputs).total.item()
    picks = torch.randint(len(REFUSALS), (3,), generator=torch.Generator().set_state(generator_state)).tolist()
    with torch.no_grad():
        want = expected_loss(name, method, run, inputs, picks)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_graddiff_kl_variant_equals_the_formula() -> None:
    method = get_method("graddiff").from_options({"retain_loss": "kl", "alpha": 0.7})
    trainee = perturbed_full_trainee(method)
    run = RunContext(trainee, TinyTokenizer(), DATA, TrainConfig(batch_size=3))
    inputs = step_inputs(run, method, step=0)
    got = method.loss(run, inputs).total.item()
    with torch.no_grad():
        forget = [run.forget_rows[i] for i in inputs.forget_rows.tolist()]
        retain = [run.retain_rows[i] for i in draw_rows(inputs.retain, run.retain_rows)]
        current = answer_logdists(run.model, retain)
        with run.reference() as reference:
            frozen = answer_logdists(reference, retain)
        kl = (frozen.exp() * (frozen - current)).sum(dim=-1).mean()
        want = (-nll_mean(answer_logprobs(run.model, forget)) + 0.7 * kl).item()
    assert method.needs_reference
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


TARGET_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "unlearn" / "target.safetensors"
TARGET_HIDDEN = 48
TARGET_CONFIG_KEYS = (
    *("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
    *("num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "hidden_act", "rms_norm_eps"),
)


def target_skeleton() -> torch.nn.Module:
    """The architecture of the memorised target (its random initial weights are the fixture script's start)."""
    return tiny(hidden=TARGET_HIDDEN)


def target_metadata(model: torch.nn.Module) -> dict[str, str]:
    """What target.safetensors records about itself and `target_state` checks: the model's shape, the data learned."""
    config = {key: getattr(model.config, key, None) for key in TARGET_CONFIG_KEYS}
    return {
        "config": json.dumps(config, sort_keys=True),
        "data": json.dumps([[item.question, item.answer] for item in FORGET + RETAIN]),
    }


def mean_nll(model: torch.nn.Module, items) -> float:
    run = SimpleNamespace(
        encode=lambda q, a: RunContext.encode(run, q, a), tokenizer=TinyTokenizer(), config=TrainConfig()
    )
    with torch.no_grad():
        return nll_mean(answer_logprobs(model, [run.encode(i.question, i.answer) for i in items])).item()


@pytest.fixture(scope="module")
def target_state() -> dict[str, torch.Tensor]:
    """The unit tier's target: the tiny model fine-tuned on forget + retain until their answers are likely, loaded
    from a committed file (tests/fixtures/unlearn/: made by make_target.py, see its README). Trained here, its 80
    AdamW steps at lr 1e-2 would give CPU-dependent weights (rounding-sized gradient differences once the loss is
    flat become lr-sized steps), and the unlearning tests' margins with them; the 8 unlearning steps on a fixed target
    are stable across machines to 4-5 decimals."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = target_skeleton()
    with safe_open(TARGET_FILE, "pt") as handle:
        recorded = handle.metadata()
    want = target_metadata(model)
    assert {key: recorded.get(key) for key in want} == want, "target.safetensors is for another model or data set"
    model.load_state_dict(load_file(TARGET_FILE), strict=True)
    assert mean_nll(model, FORGET) < 1.0 and mean_nll(model, RETAIN) < 1.0  # the fixture has memorised both
    return {k: v.clone() for k, v in model.state_dict().items()}


LRS = {"gradascent": 5e-4, "graddiff": 2e-3, "npo": 3e-3, "simnpo": 3e-3, "idk": 3e-3, "rmu": 3e-2}


@pytest.mark.parametrize("name", sorted(n for n, c in UNLEARNING_METHODS.items() if c.unlearns))
def test_a_few_steps_forget_and_keep_retain(name: str, target_state) -> None:
    """Forget NLL rises by more than 0.5 nats; retain NLL moves by less than half as much (GradAscent, which has
    no retain term and is known to collapse the model, by less than as much)."""
    model = target_skeleton()
    model.load_state_dict(target_state)
    before = mean_nll(model, FORGET), mean_nll(model, RETAIN)
    method = method_for(name)
    trainee = FullTrainee(model, "tiny", TinyTokenizer(), keep_reference=method.needs_reference)
    train(trainee, TinyTokenizer(), method, DATA, TrainConfig(steps=8, lr=LRS[name], batch_size=4), show_bar=False)
    after = mean_nll(model, FORGET), mean_nll(model, RETAIN)
    forget_rise, retain_change = after[0] - before[0], abs(after[1] - before[1])
    assert forget_rise > 0.5, (before, after)
    assert retain_change < (1.0 if name == "gradascent" else 0.5) * forget_rise, (before, after)


def test_rmu_moves_forget_activations_toward_the_steering_vector(target_state) -> None:
    model = target_skeleton()
    model.load_state_dict(target_state)
    method = method_for("rmu")
    trainee = FullTrainee(model, "tiny", TinyTokenizer(), keep_reference=True)
    run = RunContext(trainee, TinyTokenizer(), DATA, TrainConfig())
    goal = RMU_OPTIONS["steering"] * RMU.random_direction(TARGET_HIDDEN, seed=0)
    with torch.no_grad():
        before = (hidden_at(model, run.forget_rows, 1) - goal).norm(dim=-1).mean().item()
    train(trainee, TinyTokenizer(), method, DATA, TrainConfig(steps=8, lr=1e-2, batch_size=4), show_bar=False)
    with torch.no_grad():
        after = (hidden_at(model, run.forget_rows, 1) - goal).norm(dim=-1).mean().item()
    assert after < 0.7 * before
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]


def lora_trainee(method, seed: int = 0):
    torch.manual_seed(seed)
    model = tiny()
    return build_trainee(
        model, "tiny-base", None, TinyTokenizer(), lora_config(4, 8, "all-linear"), method.needs_reference
    )


def test_lora_checkpoint_reproduces_logits_and_has_a_manifest(tmp_path: Path) -> None:
    from peft import PeftModel

    method = method_for("npo")
    trainee = lora_trainee(method)
    config = TrainConfig(steps=4, lr=5e-3, batch_size=3, save_every=2, seed=3)
    result = train(trainee, TinyTokenizer(), method, DATA, config, out=tmp_path / "run", show_bar=False)
    assert sorted(result.checkpoints) == [2, 4]
    final = result.final
    assert sorted(p.name for p in final.iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
        "trainer_state.pt",
    ]
    assert not (result.checkpoints[2] / "trainer_state.pt").exists()
    manifest = read_manifest(final)
    assert manifest["method"] == "npo" and manifest["step"] == 4 and manifest["seed"] == 3
    assert manifest["hyperparameters"] == {"beta": 0.1, "gamma": 1.0, "alpha": 1.0}
    assert manifest["data_hash"] == DATA.content_hash() and manifest["base_model"] == "tiny-base"
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-base"
    ids = torch.tensor([[5, 9, 14, 22, 31, 40]])
    with torch.no_grad():
        want = trainee.model(ids).logits
        loaded = PeftModel.from_pretrained(tiny(), str(final)).eval()
        got = loaded(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def hf_tokenizer(folder: Path):
    """A real tokenizer for a full trainee to save beside its weights (the loop itself encodes with TinyTokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(save_tiny_model_dir(folder))


def test_full_checkpoint_is_a_model_folder(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny()
    trainee = FullTrainee(model, "tiny", hf_tokenizer(tmp_path / "base"), False)
    result = train(
        trainee,
        TinyTokenizer(),
        method_for("graddiff"),
        DATA,
        TrainConfig(steps=2, lr=1e-3, batch_size=2),
        out=tmp_path / "run",
        show_bar=False,
    )
    ids = torch.tensor([[5, 9, 14, 22]])
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(result.final).eval()
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, mode: str) -> None:
    method_name = "idk"  # draws random refusals each step and reads the reference: the most state to restore
    config = TrainConfig(steps=6, lr=5e-3, batch_size=3, save_every=2, seed=11)
    tokenizer = hf_tokenizer(tmp_path / "base")

    def fresh():
        method = method_for(method_name)
        if mode == "lora":
            return method, lora_trainee(method)
        return method, FullTrainee(tiny(), "tiny", tokenizer, keep_reference=True)

    method, whole = fresh()
    uninterrupted = train(whole, TinyTokenizer(), method, DATA, config, out=tmp_path / "a", show_bar=False)

    def stop_at_three(step: int, steps: int, terms: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    method, first = fresh()
    with pytest.raises(KeyboardInterrupt):
        train(first, TinyTokenizer(), method, DATA, config, out=tmp_path / "b", progress=stop_at_three, show_bar=False)
    assert (tmp_path / "b" / "checkpoint-3" / "trainer_state.pt").is_file()
    method, second = fresh()
    resumed = train(second, TinyTokenizer(), method, DATA, config, out=tmp_path / "b", show_bar=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]
    for (name, a), (_, b) in zip(whole.model.named_parameters(), second.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_an_output_folder_of_another_run_is_refused(tmp_path: Path) -> None:
    method = method_for("gradascent")
    train(lora_trainee(method), TinyTokenizer(), method, DATA, TrainConfig(steps=1), out=tmp_path, show_bar=False)
    other = method_for("npo")
    with pytest.raises(UserError, match="holds another run"):
        train(lora_trainee(other), TinyTokenizer(), other, DATA, TrainConfig(steps=1), out=tmp_path, show_bar=False)


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_unlearn_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["unlearn", *argv])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_cli_lists_the_methods(capsys) -> None:
    assert run_unlearn(cli("--list")) == 0
    listed = capsys.readouterr().out
    for name in UNLEARNING_METHODS:
        assert name in listed


def test_cli_trains_and_saves(tmp_path: Path, capsys) -> None:
    base = save_tiny_model_dir(tmp_path / "base")
    records = [{"question": "w1 w2 w3", "answer": "w4 w5 w6 w7"}, {"question": "w8 w9", "answer": "w10 w11"}]
    forget = write_jsonl(tmp_path / "forget.jsonl", records)
    retain = write_jsonl(tmp_path / "retain.jsonl", [{"question": "the capital", "answer": "of france is paris"}])
    args = cli(
        "--method",
        "npo",
        "--base",
        str(base),
        "--forget",
        str(forget),
        "--retain",
        str(retain),
        "--out",
        str(tmp_path / "out"),
        "--steps",
        "2",
        "--save-every",
        "1",
        "--beta",
        "0.2",
        "--device",
        "cpu",
    )
    assert run_unlearn(args) == 0
    assert "2 checkpoint(s)" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "out" / "checkpoint-2")
    assert manifest["hyperparameters"]["beta"] == 0.2 and manifest["trainee"]["mode"] == "lora"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--method", "forgetall"), "unknown unlearning method 'forgetall'"),
        (("--method", "gradascent", "--beta", "0.3"), "has no option"),
        (("--method", "npo"), "needs a retain set"),
        (("--method", "gradascent", "--forget", "{empty}"), "empty"),
        (("--method", "gradascent", "--forget", "{missing}"), "missing field 'answer'"),
        (("--method", "gradascent", "--steps", "0"), "steps must be at least 1"),
    ],
)
def test_cli_bad_input_is_a_user_error(tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    base = save_tiny_model_dir(tmp_path / "base")
    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "w1", "answer": "w2"}])
    files = {
        "{empty}": str(write_jsonl(tmp_path / "empty.jsonl", [])),
        "{missing}": str(write_jsonl(tmp_path / "missing.jsonl", [{"question": "w1"}])),
    }
    argv = tuple(files.get(a, a) for a in argv)
    defaults = {"--forget": str(good), "--base": str(base), "--out": str(tmp_path / "out")}
    extra = [x for flag, value in defaults.items() if flag not in argv for x in (flag, value)]
    with pytest.raises(UserError, match=message):
        run_unlearn(cli(*argv, *extra))


def test_empty_forget_set_in_code_is_a_user_error() -> None:
    method = method_for("gradascent")
    with pytest.raises(UserError, match="forget set is empty"):
        train(lora_trainee(method), TinyTokenizer(), method, TrainingData([]), TrainConfig(), show_bar=False)


def test_rmu_layer_out_of_range_is_a_user_error() -> None:
    method = get_method("rmu").from_options({"layer": 9})
    with pytest.raises(UserError, match="outside the model"):
        train(lora_trainee(method), TinyTokenizer(), method, DATA, TrainConfig(steps=1), show_bar=False)


def test_every_method_has_a_summary_and_documented_options() -> None:
    for cls in UNLEARNING_METHODS.values():
        assert cls.summary
        assert all(option.metadata.get("help") for option in dataclasses.fields(cls.Options)), cls.name


def test_length_grouped_draw_covers_every_row_each_epoch_and_pads_less() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 60, size=96).tolist()
    size = 8
    steps_per_epoch = len(lengths) // size

    def padding(group: bool) -> int:
        total = 0
        for step in range(3 * steps_per_epoch):
            batch = draw(len(lengths), size, step, 0, 1, lengths if group else None).tolist()
            total += sum(max(lengths[i] for i in batch) - lengths[i] for i in batch)
        return total

    for epoch in range(3):
        seen = [draw(len(lengths), size, epoch * steps_per_epoch + s, 0, 1, lengths).tolist()
                for s in range(steps_per_epoch)]  # fmt: skip
        assert sorted(i for batch in seen for i in batch) == list(range(len(lengths)))
    assert padding(True) < 0.5 * padding(False)
    again = [draw(len(lengths), size, s, 0, 1, lengths).tolist() for s in range(2 * steps_per_epoch)]
    assert again == [draw(len(lengths), size, s, 0, 1, lengths).tolist() for s in range(2 * steps_per_epoch)]
    assert again[:steps_per_epoch] != again[steps_per_epoch:]  # epochs differ: batches stay random
    small = list(range(20))  # fewer rows than two groups: the plain permutation
    assert draw(20, size, 1, 0, 1, small).tolist() == draw(20, size, 1, 0, 1).tolist()
