"""Odd model folders from a link or a typed path: a cut safetensors file, a corrupt config, a broken adapter or a
cut GGUF is a clear message naming the file, before any weights are loaded (library, dashboard loader and CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_embedded_hostile import write_tiny_gguf
from tiny_models import save_tiny_model_dir

from core.cli import main
from core.common.errors import UserError
from core.models.pair import ModelPair
from core.models.spec import ModelSpec, check_safetensors, resolve_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def adapter(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter") / "lora"
    model = AutoModelForCausalLM.from_pretrained(tiny)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def test_a_whole_model_and_adapter_pass(tiny: Path, adapter: Path) -> None:
    header = check_safetensors(tiny / "model.safetensors")
    assert {name for name in header if name != "__metadata__"} == set(load_file(tiny / "model.safetensors"))
    assert resolve_spec(ModelSpec(str(adapter))).adapter == str(adapter)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: cut(f, f.stat().st_size // 2), "cut short"),  # the data ends early
        (lambda f: cut(f, 8 + header_length(f) // 2), "not a whole safetensors file"),  # the header ends early
        (lambda f: cut(f, 5), "no safetensors header"),
        (lambda f: f.write_bytes(b"\xff" * 64), "no safetensors header"),  # a length beyond the file
        (lambda f: f.write_bytes((20).to_bytes(8, "little") + b"{" * 20), "not a whole safetensors file"),
        (lambda f: f.write_bytes((9).to_bytes(8, "little") + b"\xff\xfe{}{}{}{"), "not a whole safetensors file"),
    ],
    ids=["data-cut", "header-cut", "tiny", "bad-length", "bad-json", "non-utf8"],
)
def test_a_damaged_safetensors_file_is_named(tiny: Path, tmp_path: Path, damage, message: str) -> None:
    folder = copy_of(tiny, tmp_path)
    damage(folder / "model.safetensors")
    with pytest.raises(UserError, match=message) as caught:
        ModelPair.load(ModelSpec(str(folder), device="cpu"), ModelSpec(str(folder), device="cpu"))
    assert str(folder / "model.safetensors") in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"{", b"\xff\xfe\x00", b"[" * 100_000, b"[1, 2]", b""],
    ids=["truncated", "non-utf8", "deeply-nested", "not-an-object", "empty"],
)
def test_a_damaged_config_is_named(tiny: Path, tmp_path: Path, content: bytes) -> None:
    folder = copy_of(tiny, tmp_path)
    (folder / "config.json").write_bytes(content)
    with pytest.raises(UserError, match="is not readable as a model config") as caught:
        resolve_spec(ModelSpec(str(folder)))
    assert str(folder / "config.json") in str(caught.value)


def test_a_damaged_shard_index_is_named(tiny: Path, tmp_path: Path) -> None:
    folder = copy_of(tiny, tmp_path)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    with pytest.raises(UserError, match="outside its folder"):
        resolve_spec(ModelSpec(str(folder)))


@pytest.mark.parametrize("file", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_damaged_adapter_is_named(adapter: Path, tmp_path: Path, file: str) -> None:
    folder = copy_of(adapter, tmp_path)
    cut(folder / file, (folder / file).stat().st_size // 2)
    with pytest.raises(UserError, match=r"not readable as a PEFT adapter config|not a whole safetensors file"):
        resolve_spec(ModelSpec(str(folder)))


def test_a_cut_gguf_is_a_message_before_transformers_reads_it(tmp_path: Path) -> None:
    whole = write_tiny_gguf(tmp_path / "whole.gguf")
    cut_file = tmp_path / "cut.gguf"
    cut_file.write_bytes(whole.read_bytes()[:10])
    with pytest.raises(UserError, match=r"cut\.gguf"):
        resolve_spec(ModelSpec(str(cut_file)))
    with pytest.raises(UserError, match=r"cut\.gguf"):
        resolve_spec(ModelSpec(str(tmp_path), gguf_file="cut.gguf"))


def test_the_cli_says_one_line_for_a_cut_model(tiny: Path, tmp_path: Path, capsys) -> None:
    folder = copy_of(tiny, tmp_path)
    cut(folder / "model.safetensors", 100)
    assert main(["probe", "--base", str(folder), "--unlearned", str(folder), "--prompt", "a b", "--json"]) == 2
    err = capsys.readouterr().err
    assert "not a whole safetensors file" in err and "Traceback" not in err
