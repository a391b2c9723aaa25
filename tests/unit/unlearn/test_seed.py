"""`unlearn --seed` fixes a new LoRA adapter's initial weights, whatever the process drew before: `unlearn` and
`unlearn --ray` both build the trainee through core.cli.unlearn.load_trainee, which seeds the global RNG just before
the adapter is created (PEFT draws lora_A from it; lora_B starts at zero)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_model_dir

from core.cli.unlearn import add_parser, load_trainee, run_unlearn
from core.unlearn.methods import get_method

LORA = SimpleNamespace(lora=True, lora_rank=4, lora_alpha=8.0, lora_targets="all-linear")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("seed") / "base")


def initial_adapter(base: Path, seed: int, disturb: int) -> dict[str, torch.Tensor]:
    """The trainable (adapter) weights right after load_trainee, the process's RNG first moved to another state."""
    torch.manual_seed(disturb)
    torch.rand(disturb + 1)
    trainee, _ = load_trainee(str(base), "cpu", get_method("gradascent").from_options({}), LORA, seed=seed)
    return {name: p.detach().clone() for name, p in trainee.model.named_parameters() if p.requires_grad}


def test_same_seed_same_initial_adapter_other_seed_another(base: Path) -> None:
    first = initial_adapter(base, seed=7, disturb=1)
    again = initial_adapter(base, seed=7, disturb=2)
    other = initial_adapter(base, seed=8, disturb=1)
    assert first and first.keys() == again.keys() == other.keys()
    assert any("lora_A" in name for name in first)
    for name in first:
        assert torch.equal(first[name], again[name]), name  # same seed, same draws, bit for bit
    drawn = [name for name in first if "lora_A" in name]  # lora_B starts at zero under every seed
    assert all(not torch.equal(first[name], other[name]) for name in drawn)


def cli_run(base: Path, tmp_path: Path, name: str, seed: int, disturb: int) -> dict[str, torch.Tensor]:
    """One `unlearn` step (no --ray) with the given seed, the process's RNG moved first; the saved adapter."""
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"question": "w1 w2 w3", "answer": "w4 w5 w6"}) + "\n")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / name
    args = parser.parse_args(
        ["unlearn", "--method", "gradascent", "--base", str(base), "--forget", str(forget), "--out", str(out),
         "--steps", "1", "--save-every", "1", "--seed", str(seed), "--lora-rank", "4", "--device", "cpu"]
    )  # fmt: skip
    torch.manual_seed(disturb)
    torch.rand(disturb + 1)
    assert run_unlearn(args) == 0
    return load_file(out / "checkpoint-1" / "adapter_model.safetensors")


def test_cli_runs_with_one_seed_save_the_same_adapter(base: Path, tmp_path: Path) -> None:
    first = cli_run(base, tmp_path, "a", seed=3, disturb=1)
    again = cli_run(base, tmp_path, "b", seed=3, disturb=2)
    other = cli_run(base, tmp_path, "c", seed=4, disturb=1)
    assert first.keys() == again.keys() == other.keys() and first
    for name in first:
        assert torch.equal(first[name], again[name]), name
    assert all(not torch.equal(first[name], other[name]) for name in first if "lora_A" in name)
