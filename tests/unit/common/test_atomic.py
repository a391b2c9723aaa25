"""Nothing lost, nothing half-written trusted: core.common.cache's atomic folders and files under concurrent writers and
readers, its file lock, and training checkpoints checked against their manifests when a run resumes."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import TinyTokenizer, make_tiny_llama

from core.common import cache
from core.common.cache import (
    COMPLETE_MARKER,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_text,
    file_hash,
    is_complete,
)
from core.unlearn import TrainConfig, TrainingData, build_trainee, get_method, lora_config, read_manifest, train
from core.unlearn.checkpoints import verify_checkpoint

ROOT = Path(__file__).resolve().parents[3]
NAMES = [f"part-{i:02d}.bin" for i in range(24)]
SIZE = 4096

# A writer process: builds the same target folder again and again (every file SIZE bytes of its own letter).
WRITER = """
import sys
from pathlib import Path
from core.common import cache
from core.common.cache import atomic_directory
target, writes, letter, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
if mode == "fallback":
    cache._exchange = lambda a, b: False
names = [f"part-{i:02d}.bin" for i in range(24)]
for _ in range(writes):
    with atomic_directory(target, {"writer": sys.argv[3]}) as scratch:
        for name in names:
            (scratch / name).write_bytes(letter * 4096)
"""


def writers(target: Path, count: int, writes: int, mode: str) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), str(writes), "ab"[i], mode],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]


def read_by_path(target: Path) -> str | None:
    """None when the folder is unmarked or whole; else what is wrong with a folder whose marker was seen."""
    if not (target / COMPLETE_MARKER).is_file():
        return None
    for name in NAMES:
        try:
            data = (target / name).read_bytes()
        except FileNotFoundError:
            return f"{name} missing"
        if len(data) != SIZE or len(set(data)) != 1:
            return f"{name} has {len(data)} bytes"
    return None


def read_by_folder(target: Path) -> str | None:
    """Like read_by_path, but on one folder (an open handle), whatever is renamed meanwhile: a file gone while that
    folder's marker is there before and after the reads is a folder trusted half-deleted."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        if not exists(COMPLETE_MARKER, fd):
            return None
        missing = [name for name in NAMES if not exists(name, fd)]
        return f"{missing[0]} missing" if missing and exists(COMPLETE_MARKER, fd) else None
    finally:
        os.close(fd)


def exists(name: str, folder: int) -> bool:
    try:
        os.stat(name, dir_fd=folder)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_concurrent_writers_never_fail_and_readers_never_trust_a_half_folder(tmp_path: Path, mode: str) -> None:
    if mode == "exchange" and not cache._exchange_supported(tmp_path):
        pytest.skip("this file system cannot swap two folders in one step")
    target = tmp_path / "shared" / "result"
    procs = writers(target, count=2, writes=100, mode=mode)
    reader = read_by_path if mode == "exchange" else read_by_folder  # the fallback has a moment without target
    problems: list[str] = []
    reads = 0
    while any(p.poll() is None for p in procs):
        problem = reader(target)
        reads += 1
        if problem:
            problems.append(problem)
    errors = [p.stderr.read() for p in procs if p.wait() != 0]
    assert not errors, errors[0][-2000:]
    assert not problems, f"{len(problems)} of {reads} reads trusted a half folder, e.g. {problems[:3]}"
    assert is_complete(target) and read_by_path(target) is None
    leftovers = [p.name for p in target.parent.iterdir() if p.name != "result"]
    assert not leftovers, leftovers


def test_a_failed_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result"
    with atomic_directory(target, {"version": 1}) as scratch:
        (scratch / "data.txt").write_text("old")
    monkeypatch.setattr(cache, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def failing_rename(src, dst) -> None:
        if Path(dst) == target and ".building." in Path(src).name and not target.exists():  # the old one is aside
            raise OSError(errno.EIO, "disk trouble")
        real_rename(src, dst)

    monkeypatch.setattr(cache.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk trouble"), atomic_directory(target, {"version": 2}) as scratch:
        (scratch / "data.txt").write_text("new")
    assert (target / "data.txt").read_text() == "old" and cache.read_completion(target) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result"]


def test_a_failed_build_leaves_the_old_folder_and_no_scratch(tmp_path: Path) -> None:
    target = tmp_path / "result"
    with atomic_directory(target) as scratch:
        (scratch / "data.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as scratch:
        (scratch / "data.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert (target / "data.txt").read_text() == "old" and is_complete(target)
    assert [p.name for p in tmp_path.iterdir()] == ["result"]


def test_atomic_writes_replace_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "blob.bin"
    atomic_write_bytes(path, b"\x00\x01" * 10)
    assert path.read_bytes() == b"\x00\x01" * 10 and (path.stat().st_mode & 0o777) == 0o644
    atomic_write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    assert [p.name for p in path.parent.iterdir()] == ["blob.bin"]


def test_a_file_lock_lets_one_holder_in_at_a_time(tmp_path: Path) -> None:
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom core.common.cache import file_lock\n"
        "with file_lock(Path(sys.argv[1])):\n"
        "    print('in', flush=True)\n    time.sleep(0.5)\n    Path(sys.argv[2]).touch()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lock = tmp_path / "locks" / ".x.lock"
    done = tmp_path / "holder-done"  # touched by the holder as the last thing it does while holding the lock
    command = [sys.executable, "-c", script, str(lock), str(done)]
    holder = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "in"
    with cache.file_lock(lock):
        assert done.exists()  # we got in only after the holder had finished (order, not timing)
    holder.wait()


FORGET = [SimpleNamespace(question=f"Who is Zed{i}?", answer=f"Zed{i} paints blue cats.") for i in range(4)]
ADAPTER = "adapter_model.safetensors"


def tiny_run(out: Path):
    """Four LoRA steps of gradient ascent on a tiny Llama, a checkpoint every two steps (same result every time)."""
    method = get_method("gradascent").from_options({})
    torch.manual_seed(0)
    lora = lora_config(4, 8, "all-linear")
    trainee = build_trainee(make_tiny_llama(seed=0), "tiny-base", None, TinyTokenizer(), lora, False)
    config = TrainConfig(steps=4, lr=5e-3, batch_size=2, save_every=2, seed=1)
    return train(trainee, TinyTokenizer(), method, TrainingData(FORGET), config, out=out, show_bar=False)


def test_a_checkpoint_manifest_lists_its_files_with_size_and_sha256(tmp_path: Path) -> None:
    final = tiny_run(tmp_path / "run").final
    files = read_manifest(final)["files"]
    assert sorted(files) == ["adapter_config.json", ADAPTER, "trainer_state.pt"]
    for name, record in files.items():
        assert record == {"size": (final / name).stat().st_size, "sha256": file_hash(final / name)}
    assert verify_checkpoint(final) is None


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("checkpoint", "damage", "why"),
    [
        ("checkpoint-2", lambda c: cut_in_half(c / ADAPTER), "bytes, its manifest says"),
        ("checkpoint-2", lambda c: flip_a_byte(c / ADAPTER), "differs from the sha256"),
        ("checkpoint-2", lambda c: (c / ADAPTER).unlink(), "is missing"),
        ("checkpoint-2", lambda c: (c / COMPLETE_MARKER).unlink(), "missing or incomplete"),
        ("checkpoint-4", lambda c: cut_in_half(c / "trainer_state.pt"), "bytes, its manifest says"),
    ],
    ids=["weights cut", "weights changed", "weights deleted", "marker deleted", "optimizer state cut"],
)
def test_a_resumed_run_redoes_a_damaged_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, checkpoint: str, damage, why: str
) -> None:
    out = tmp_path / "run"
    tiny_run(out)
    shutil.copytree(out, tmp_path / "whole")
    damage(out / checkpoint)
    with caplog.at_level(logging.WARNING, logger="core.unlearn.checkpoints"):
        result = tiny_run(out)  # the same command again: a resume
    assert f"checkpoint {checkpoint.split('-')[1]} of {out} is not trusted" in caplog.text and why in caplog.text
    assert sorted(result.checkpoints) == [2, 4]
    for step in (2, 4):
        redone = out / f"checkpoint-{step}"
        assert verify_checkpoint(redone) is None
        assert (redone / ADAPTER).read_bytes() == (tmp_path / "whole" / f"checkpoint-{step}" / ADAPTER).read_bytes()
