"""What only the operator switches on (remote code, pickle weights, for models and PEFT adapters alike: from the
environment, never from the browser), the memory check before a pair loads, and the note a caller gets while
another job holds a side of the shared pair."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import pytest
import streamlit as st
import torch
from safetensors.torch import load_file
from streamlit.testing.v1 import AppTest
from tiny_models import save_tiny_model_dir

from core.cli.common import add_pair_arguments, pair_from_args
from core.common.errors import UserError
from core.models import loading as models
from core.models.loading import estimate_pair_bytes
from core.models.pair import ModelPair, model_job
from core.models.spec import ModelSpec, operator_opt_ins, resolve_spec
from dashboard.state import keys
from dashboard.state import pair as pair_state

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "dashboard" / "app.py"
OPT_IN_ENV = ("ULENS_TRUST_REMOTE_CODE", "ULENS_ALLOW_PICKLE", "ULENS_SKIP_MEMORY_CHECK")


@pytest.fixture(autouse=True)
def operator_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No opt-in set unless a test sets it; fresh Streamlit caches and cache home."""
    for name in OPT_IN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))
    st.cache_resource.clear()


def save_adapter(model_dir: Path, out: Path, safetensors: bool) -> Path:
    """A LoRA adapter on `model_dir` saved as PEFT does: adapter_model.safetensors, or pickle adapter_model.bin."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(
        out, safe_serialization=safetensors
    )
    return out


# ------------------------------------------------------------------------------------------------ pickle adapters


def test_pickle_only_adapter_is_refused_without_the_opt_in(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter", safetensors=False)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    for unlearned in (ModelSpec(str(adapter)), ModelSpec.parse(f"{tiny_model_dir}::adapter={adapter}")):
        with pytest.raises(UserError, match=r"only pickle weights \(adapter_model\.bin.*ULENS_ALLOW_PICKLE=1"):
            ModelPair.load(ModelSpec(str(tiny_model_dir)), unlearned)


def test_pickle_only_adapter_loads_with_the_opt_in(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter", safetensors=False)
    opted = {"allow_unsafe_weights": True}
    pair = ModelPair.load(ModelSpec(str(tiny_model_dir), **opted), ModelSpec(str(adapter), **opted))
    assert pair.shares_backbone
    ids = torch.tensor([[4, 9, 17, 30]])
    with torch.no_grad(), pair.use("base") as base:
        before = base(ids).logits
    with torch.no_grad(), pair.use("unlearned") as unlearned:
        after = unlearned(ids).logits
    assert (after - before).abs().max() > 1e-4  # the adapter really loaded


def test_safetensors_adapter_needs_no_opt_in(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter", safetensors=True)
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")  # PEFT ignores it
    assert ModelPair.load(ModelSpec(str(tiny_model_dir)), ModelSpec(str(adapter))).shares_backbone


# --------------------------------------------------------------------------------------------- environment opt-ins


@pytest.mark.parametrize(
    ("trust", "pickle", "expected"),
    [
        (None, None, (False, False)),
        ("1", None, (True, False)),
        (None, "true", (False, True)),
        ("YES", "on", (True, True)),
        ("0", "false", (False, False)),
        ("", "no", (False, False)),
    ],
)
def test_opt_ins_come_from_the_environment(monkeypatch, trust, pickle, expected):
    for name, value in (("ULENS_TRUST_REMOTE_CODE", trust), ("ULENS_ALLOW_PICKLE", pickle)):
        if value is not None:
            monkeypatch.setenv(name, value)
    opt_ins = operator_opt_ins()
    assert (opt_ins["trust_remote_code"], opt_ins["allow_unsafe_weights"]) == expected


def sidebar_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state[keys.AUTOLOAD] = False
    return at.run()


def test_sidebar_has_no_opt_in_boxes_only_a_read_only_line():
    at = sidebar_app()
    assert not at.exception
    assert not [box.label for box in at.sidebar.checkbox if "remote" in box.label.lower() or "pickle" in box.label]
    line = next(c.value for c in at.sidebar.caption if c.value.startswith("Remote model code"))
    assert "**off**" in line and "pickle weights: **off**" in line and "ULENS_ALLOW_PICKLE=1" in line


def test_sidebar_loads_with_the_operators_opt_ins(monkeypatch, tmp_path):
    """A pickle-only model folder: refused by the sidebar without the environment's opt-in, loaded with it."""
    folder = save_tiny_model_dir(tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    def load(at: AppTest) -> AppTest:
        next(t for t in at.text_input if t.label == "Base model").input(str(folder))
        next(t for t in at.text_input if t.label == "Unlearned model").input(str(folder))
        return next(b for b in at.button if b.label == "Load pair").click().run()

    refused = load(sidebar_app())
    assert any("no safetensors weights" in e.value for e in refused.error), [e.value for e in refused.error]
    assert keys.PAIR_KEY not in refused.session_state

    monkeypatch.setenv("ULENS_ALLOW_PICKLE", "1")
    at = load(sidebar_app())
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state[keys.PAIR_KEY][4:] == (False, True)
    assert any("pickle weights: **allowed**" in c.value for c in at.sidebar.caption)


# ------------------------------------------------------------------------------------------------- memory estimate


def test_estimate_counts_a_shared_backbone_once(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "adapter", safetensors=True)
    other = save_tiny_model_dir(tmp_path / "other", seed=1)
    shared = {"base": resolve_spec(ModelSpec(str(tiny_model_dir))), "unlearned": resolve_spec(ModelSpec(str(adapter)))}
    separate = {"base": resolve_spec(ModelSpec(str(tiny_model_dir))), "unlearned": resolve_spec(ModelSpec(str(other)))}
    loaded = ModelPair.load(*shared.values()).parameter_bytes()
    assert estimate_pair_bytes(shared, torch.float32) == pytest.approx(loaded, rel=0.05)
    both = ModelPair.load(*separate.values()).parameter_bytes()  # plus a few buffers (rotary frequencies)
    assert estimate_pair_bytes(separate, torch.float32) == pytest.approx(both, rel=0.01)
    assert estimate_pair_bytes(separate, torch.bfloat16) == estimate_pair_bytes(separate, torch.float32) // 2


def test_estimate_reads_the_config_where_there_is_no_safetensors_file(tiny_model_dir):
    spec = {"base": ModelSpec(str(tiny_model_dir)), "unlearned": ModelSpec(str(tiny_model_dir))}
    from_header = estimate_pair_bytes(spec, torch.float32)
    torch.save(load_file(tiny_model_dir / "model.safetensors"), tiny_model_dir / "pytorch_model.bin")
    (tiny_model_dir / "model.safetensors").unlink()
    assert estimate_pair_bytes(spec, torch.float32) == from_header


def test_a_pair_larger_than_free_memory_is_refused_before_loading(tiny_model_dir, monkeypatch):
    loads = []
    monkeypatch.setattr(models, "available_memory", lambda device, spread=False: 10 * 2**20)
    monkeypatch.setattr(models, "load_backbone", lambda *args: loads.append(args))
    spec = ModelSpec(str(tiny_model_dir))
    with pytest.raises(UserError, match=r"needs about \d+ MiB .* only 10 MiB of memory is available on cpu") as error:
        ModelPair.load(spec, spec)
    assert "ULENS_SKIP_MEMORY_CHECK=1" in str(error.value) and "--skip-memory-check" in str(error.value)
    assert not loads  # refused before any weights were read


def test_the_operator_can_skip_the_memory_check(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(models, "available_memory", lambda device, spread=False: 10 * 2**20)
    spec = ModelSpec(str(tiny_model_dir))
    assert ModelPair.load(spec, spec, memory_check=False).parameter_bytes() > 0
    parser = argparse.ArgumentParser()
    add_pair_arguments(parser)
    pair_args = ["--base", str(tiny_model_dir), "--unlearned", str(tiny_model_dir)]
    with pytest.raises(UserError, match="needs about"):
        pair_from_args(parser.parse_args(pair_args))
    assert pair_from_args(parser.parse_args([*pair_args, "--skip-memory-check"])).parameter_bytes() > 0
    monkeypatch.setenv("ULENS_SKIP_MEMORY_CHECK", "1")
    assert ModelPair.load(spec, spec).parameter_bytes() > 0


# ---------------------------------------------------------------------------------------------- waiting for a side


def hold_side(pair: ModelPair, side: str, job: str) -> tuple[threading.Event, threading.Thread]:
    """Another session's job holding `side` until the returned event is set."""
    held, done = threading.Event(), threading.Event()

    def work() -> None:
        with model_job(job), pair.use(side):
            held.set()
            done.wait(30)

    thread = threading.Thread(target=work)
    thread.start()
    assert held.wait(10)
    return done, thread


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_waiting_caller_learns_which_job_holds_the_side(tiny_llama, tiny_tokenizer):
    pair = ModelPair.from_models(tiny_llama, tiny_llama, tiny_tokenizer)  # one model: both sides share one lock
    release, holder = hold_side(pair, "base", "attribution")
    assert pair.holder("base") == pair.holder("unlearned") == "attribution"
    calls: list[tuple[str | None, bool]] = []
    holders: list[str | None] = []

    def probe() -> None:
        with pair.use("unlearned", "probe", lambda *call: calls.append(call)):
            holders.append(pair.holder("base"))

    waiter = threading.Thread(target=probe)
    waiter.start()
    wait_for(lambda: bool(calls))
    assert calls == [("attribution", True)] and not holders
    release.set()
    holder.join(10)
    waiter.join(10)
    assert calls[-1] == ("attribution", False) and holders == ["probe"] and pair.holder("base") is None


def test_the_dashboard_says_what_it_waits_for(tiny_llama, tiny_tokenizer, monkeypatch):
    class Slot:
        """The placeholder st.empty() gives, recording what it shows (None: nothing)."""

        def __init__(self) -> None:
            self.shown: list[str | None] = []

        def caption(self, text: str) -> None:
            self.shown.append(text)

        def empty(self) -> None:
            self.shown.append(None)

    slot = Slot()
    monkeypatch.setattr(pair_state.st, "empty", lambda: slot)
    pair = ModelPair.from_models(tiny_llama, tiny_llama, tiny_tokenizer)
    release, holder = hold_side(pair, "base", "attribution")
    finished = threading.Event()

    def page() -> None:
        with pair_state.shared_model_job("probe"), pair.use("base"):
            finished.set()

    thread = threading.Thread(target=page)
    thread.start()
    wait_for(lambda: bool(slot.shown))
    assert slot.shown[0] == ":material/hourglass_top: waiting for another session's attribution…"
    assert not finished.is_set()
    release.set()
    holder.join(10)
    thread.join(10)
    assert finished.is_set() and slot.shown[-1] is None  # the note went once the side was free


def test_uncontended_use_calls_nothing_and_old_callers_work(tiny_llama, tiny_tokenizer):
    pair = ModelPair.from_models(tiny_llama, tiny_llama, tiny_tokenizer)
    calls = []
    with pair.use("base", "probe", lambda *call: calls.append(call)), pair.use("unlearned"):  # re-entrant
        assert pair.holder("base") == "probe"
    with pair._sides["base"].lock:  # the RLock interface existing code uses
        assert pair.holder("base") is None
    assert not calls and pair.holder("base") is None
