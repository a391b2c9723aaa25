"""Real-size pairs on tiny checkpoints: tensors two full checkpoints hold identically are loaded once (found from
headers and raw-byte hashes), training a side never writes into the other, and a memory budget offloads layers
with accelerate while every number stays what the in-memory pair gives."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny_model_dir

from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.lens import logit_lens, weight_change
from core.analyses.probe import ProbeRequest, score
from core.cli.common import add_pair_arguments, pair_from_args
from core.common.errors import UserError
from core.common.limits import format_bytes
from core.data.qa import QAItem
from core.models import offload, sharing
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.unlearn import FullTrainee, TrainConfig, TrainingData, get_method, train

CHANGED = [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)] + ["model.layers.1.mlp.up_proj.weight"]
PROMPT, ANSWER = "the capital of france is", "paris"


def rewrite(folder: Path, change) -> None:
    """Rewrite a folder's model.safetensors with `change(state)` applied."""
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A base, an RMU-style copy (three MLP matrices changed) and a fully changed copy, as safetensors folders."""
    root = tmp_path_factory.mktemp("real_size")
    base = save_tiny_model_dir(root / "base")
    rmu, full = root / "rmu", root / "full"
    shutil.copytree(base, rmu)
    shutil.copytree(base, full)
    generator = torch.Generator().manual_seed(3)

    def perturb(names):
        def change(state):
            for name in names or list(state):
                state[name] = state[name] + 0.1 * torch.randn(state[name].shape, generator=generator)

        return change

    rewrite(rmu, perturb(CHANGED))
    rewrite(full, perturb(None))
    return {"base": base, "rmu": rmu, "full": full}


def load(folders, unlearned: str, **options) -> ModelPair:
    return ModelPair.load(ModelSpec(str(folders["base"])), ModelSpec(str(folders[unlearned])), **options)


def side(pair: ModelPair, name: str) -> torch.nn.Module:
    with pair.use(name) as model:
        return model


def test_plan_finds_the_changed_tensors_by_hash(folders):
    plan = sharing.plan_sharing(folders["base"], folders["rmu"])
    state = load_file(folders["base"] / "model.safetensors")
    assert sorted(plan.differing) == sorted(CHANGED)
    assert plan.identical == frozenset(state) - set(CHANGED)
    changed = sum(state[name].numel() for name in CHANGED)
    total = sum(t.numel() for t in state.values())
    assert plan.summary() == f"3 of {len(state)} tensors differ ({100 * changed / total:.3g} % of parameters)"
    # a tensor whose bytes are the same but dtype differs is caught by the header, before any hashing
    assert sharing.plan_sharing(folders["base"], folders["base"]).differing == ()


def test_a_header_difference_needs_no_hash(folders, tmp_path, monkeypatch):
    other = tmp_path / "half"
    shutil.copytree(folders["base"], other)
    rewrite(other, lambda state: state.update({"model.norm.weight": state["model.norm.weight"].half()}))
    hashed = []
    real = sharing.tensor_digest
    monkeypatch.setattr(sharing, "tensor_digest", lambda t: hashed.append(t) or real(t))
    plan = sharing.plan_sharing(folders["base"], other)
    assert plan.differing == ("model.norm.weight",)
    assert all(t.file.parent != other or "norm.weight" not in str(t) for t in hashed)
    assert len(hashed) == 2 * (plan.n_tensors - 1)


def test_identical_tensors_are_loaded_once(folders):
    pair = load(folders, "rmu")
    base, unlearned = side(pair, "base"), side(pair, "unlearned")
    reference = ModelPair.load(ModelSpec(str(folders["rmu"])), ModelSpec(str(folders["rmu"])))
    plain = side(reference, "base")
    base_params = dict(base.named_parameters())
    for name, tensor in unlearned.named_parameters():
        assert torch.equal(tensor, plain.get_parameter(name)), name
        assert (tensor is base_params[name]) == (name not in CHANGED), name
    changed_bytes = sum(unlearned.get_parameter(n).numel() * 4 for n in CHANGED)
    changed_bytes += sum(b.untyped_storage().nbytes() for b in unlearned.buffers())  # its own rotary tables
    assert pair.parameter_bytes() == reference.parameter_bytes() + changed_bytes  # one model + the changed tensors
    assert pair.describe()["tensors"] == sharing.plan_sharing(folders["base"], folders["rmu"]).summary()
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(unlearned(ids).logits, plain(ids).logits, atol=0, rtol=0)


def test_weight_map_on_a_shared_pair_equals_the_separately_loaded_one(folders):
    from transformers import AutoModelForCausalLM

    shared = weight_change(load(folders, "rmu"))
    plain = [AutoModelForCausalLM.from_pretrained(folders[name]) for name in ("base", "rmu")]
    separate = weight_change(ModelPair.from_models(*plain, None))
    assert [(c.name, c.delta_norm) for c in shared.changes] == [(c.name, c.delta_norm) for c in separate.changes]
    assert sorted(c.name for c in shared.changes if c.delta_norm > 0) == sorted(CHANGED)


def test_training_a_shared_side_never_changes_the_base(folders):
    pair = load(folders, "rmu")
    base, unlearned = side(pair, "base"), side(pair, "unlearned")
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    trainee = FullTrainee(unlearned, "rmu", pair.tokenizer, keep_reference=False)
    items = [QAItem(index=0, question="the capital of france is", answer="paris")]
    train(trainee, pair.tokenizer, get_method("gradascent")(), TrainingData(forget=items), TrainConfig(steps=1, lr=0.1))
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in trainee.model.named_parameters())


@pytest.mark.parametrize("size, expected", [("12GB", 12 * 2**30), ("500 MiB", 500 * 2**20), ("1.5g", int(1.5 * 2**30))])
def test_sizes(size, expected):
    assert offload.parse_size(size) == expected


@pytest.mark.parametrize("size", ["lots", "12 parsecs", "1kb"])
def test_bad_sizes_are_user_errors(size):
    with pytest.raises(UserError, match="memory budget"):
        offload.parse_size(size)


@pytest.fixture
def small_budgets(monkeypatch):
    """Budgets of kilobytes for kilobyte models (the real floor, MIN_BUDGET, is 16 MiB)."""
    monkeypatch.setattr(offload, "MIN_BUDGET", 1024)
    return 1024


def test_offloaded_pair_gives_the_same_numbers(folders, small_budgets):
    memory = load(folders, "full")
    one_model = side(memory, "base")
    size = sum(p.numel() * 4 for p in one_model.parameters())
    offloaded = load(folders, "full", max_memory=size)  # a one-model budget for a two-model pair
    described = offloaded.describe()
    assert described["offloaded"] and "on disk" in described["offloaded"]
    assert set(described["probe_seconds"]) == {"base", "unlearned"}
    assert any(p.device.type == "meta" for p in side(offloaded, "unlearned").parameters())
    (a,) = score(memory, [ProbeRequest(PROMPT, ANSWER)])
    (b,) = score(offloaded, [ProbeRequest(PROMPT, ANSWER)])
    for x, y in zip(a.tokens, b.tokens, strict=True):
        assert abs(x.logprob_base - y.logprob_base) <= 1e-5 and abs(x.logprob_unlearned - y.logprob_unlearned) <= 1e-5
    lens_a, lens_b = logit_lens(memory, PROMPT, ANSWER), logit_lens(offloaded, PROMPT, ANSWER)
    torch.testing.assert_close(torch.tensor(lens_b.unlearned.logprob), torch.tensor(lens_a.unlearned.logprob))
    settings = AttributionSettings(n_steps=4)
    ig_a, ig_b = (attribute(p, PROMPT, ANSWER, settings=settings) for p in (memory, offloaded))
    torch.testing.assert_close(torch.tensor(ig_b.delta), torch.tensor(ig_a.delta), atol=1e-5, rtol=0)
    changes_a, changes_b = weight_change(memory).changes, weight_change(offloaded).changes
    assert [c.delta_norm for c in changes_b] == pytest.approx([c.delta_norm for c in changes_a], rel=1e-6)


def test_automatic_budget_when_the_pair_does_not_fit(folders, small_budgets, monkeypatch):
    from core.models import loading

    one = sum(t.numel() * 4 for t in load_file(folders["base"] / "model.safetensors").values())
    monkeypatch.setattr(loading, "LOAD_OVERHEAD", 0)
    monkeypatch.setattr(loading, "available_memory", lambda device, spread=False: int(1.5 * one / 0.9 * 1.2))
    pair = load(folders, "full")
    described = pair.describe()
    assert described["automatic_budget"] and described["offloaded"]
    budget = offload.automatic_budget(int(1.5 * one / 0.9 * 1.2), 1.2, 0)
    assert described["max_memory"] == format_bytes(budget)


def test_cli_max_memory(folders, small_budgets):
    parser = argparse.ArgumentParser()
    add_pair_arguments(parser)
    args = parser.parse_args(
        ["--base", str(folders["base"]), "--unlearned", str(folders["full"]), "--max-memory", "4kb"]
    )
    assert args.max_memory == 4096
    assert pair_from_args(args).describe()["offloaded"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-memory", "plenty"])


def test_dashboard_budget_field_and_lines(folders, small_budgets):
    from dashboard.plain import shown
    from dashboard.state.memory import max_memory_field, memory_lines

    class Field:
        def __init__(self, text: str) -> None:
            self.text, self.captions = text, []

        def text_input(self, *args, **kwargs) -> str:
            return self.text

        def caption(self, text: str) -> None:
            self.captions.append(text)

    assert max_memory_field(Field("12GB")) == 12 * 2**30
    assert max_memory_field(Field("")) is None
    bad = Field("<b>lots</b>")
    assert max_memory_field(bad) is None and "&lt;b&gt;" not in bad.captions[0] and "memory budget" in bad.captions[0]
    tiny = load(folders, "full", max_memory=8192)
    info = tiny.describe()
    lines = [shown(line) for line in memory_lines(info)]
    side_text = "all layers, lm_head, model.norm, model.rotary_emb on disk"
    assert f"Offloaded: base: {side_text}; unlearned: {side_text}" in lines  # the embeddings stay in memory
    # code that finds the device from the first parameter (the embeddings) still works with all layers on disk
    from core.data.qa import QADataset, SplitData
    from core.evaluation.evaluate import evaluate_model
    from core.evaluation.settings import EvalSettings

    items = [QAItem(index=0, question=PROMPT, answer=ANSWER)]
    with tiny.use("unlearned") as model:
        logs = evaluate_model(model, tiny.tokenizer, SplitData(forget=QADataset("t", "forget", items)), EvalSettings())
    assert logs["forget_Q_A_Prob"]["agg_value"] > 0
    assert "Memory budget: 0 MiB" in lines  # format_bytes rounds 8 KiB to whole MiB
    summary = sharing.plan_sharing(folders["base"], folders["rmu"]).summary()
    assert [shown(line) for line in memory_lines(load(folders, "rmu").describe())] == [f"Tensors: {summary}"]


def test_cli_model_plan_reads_no_weights(folders, small_budgets, capsys, monkeypatch):
    import json

    from core.cli import main
    from core.models import loading

    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: pytest.fail("--plan loaded weights"))
    names = ["--base", str(folders["base"]), "--unlearned", str(folders["rmu"])]
    assert main(["model", "--plan", *names]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["tensors"] == sharing.plan_sharing(folders["base"], folders["rmu"]).summary()
    assert plan["offloaded"] is None
    names[-1] = str(folders["full"])
    assert main(["model", "--plan", *names, "--max-memory", "8kb"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["tensors"] is None and "all layers" in plan["offloaded"] and plan["max_memory"] == format_bytes(8192)


def test_tied_embeddings_stay_together_when_offloaded(tmp_path, small_budgets):
    """Llama-3.2-1B ties lm_head to the input embeddings: both stay on the device, whatever else goes to disk."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = save_tiny_model_dir(tmp_path / "tied")
    (folder / "model.safetensors").unlink()
    config = AutoConfig.from_pretrained(folder)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    config.save_pretrained(folder)
    # As in 3.2-1B, lm_head.weight is not in the file; written by hand, whatever save_pretrained decides to drop
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    memory = ModelPair.load(ModelSpec(str(folder)), ModelSpec(str(folder)))
    offloaded = ModelPair.load(ModelSpec(str(folder)), ModelSpec(str(folder)), max_memory=8192)
    assert "lm_head" not in offloaded.describe()["offloaded"] and "all layers" in offloaded.describe()["offloaded"]
    (a,) = score(memory, [ProbeRequest(PROMPT, ANSWER)])
    (b,) = score(offloaded, [ProbeRequest(PROMPT, ANSWER)])
    assert [t.logprob_base for t in a.tokens] == pytest.approx([t.logprob_base for t in b.tokens], abs=1e-5)
