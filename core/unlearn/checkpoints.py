"""Checkpoints in the usual HF layout (adapter only for LoRA) with a manifest, and what resuming needs.

`OUT/checkpoint-<step>/` holds the weights, `manifest.json` (method, hyper-parameters, step, seed, data hash,
base model, and the size and sha256 of every file) and, in the latest checkpoint only, `trainer_state.pt`
(optimizer state, torch RNG, the run log). `OUT/run.json` lists the checkpoints. Each checkpoint is written
atomically: a half-written one is never used; a resumed run checks every checkpoint against its manifest and
redoes one whose files changed or went missing since.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.common.cache import COMPLETE_MARKER, atomic_directory, atomic_write_json, content_hash, file_hash, is_complete
from core.common.errors import UserError

if TYPE_CHECKING:
    from core.unlearn.methods import UnlearningMethod
    from core.unlearn.trainee import Trainee
    from core.unlearn.trainer import TrainConfig

log = logging.getLogger(__name__)

CODE_VERSION = "2"  # bump when a loss or the loop changes meaning: cached demo runs are then rebuilt
RUN_FORMAT = "unlearning-lens/unlearn-run/1"
RUN_FILE = "run.json"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dirs(out: Path) -> dict[int, Path]:
    """The complete checkpoints under `out`, by step."""
    found = {}
    if out.is_dir():
        for child in out.iterdir():
            match = _CHECKPOINT.match(child.name)
            if match and is_complete(child):
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / MANIFEST).read_text(encoding="utf-8"))


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in `folder` (by relative path) but the manifest and the completion marker."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_hash(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in {MANIFEST, COMPLETE_MARKER}
    }


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None when `checkpoint` is complete and holds every file its manifest lists, with the size and sha256 listed;
    else what is wrong. The trainer state may be gone: it is deleted from all but the latest checkpoint."""
    if not is_complete(checkpoint):
        return "it is not marked complete"
    try:
        files = read_manifest(checkpoint)["files"]
        for name, record in files.items():
            path = checkpoint / name
            if not path.is_file():
                if name == TRAINER_STATE:
                    continue
                return f"{name} is missing"
            if path.stat().st_size != record["size"]:
                return f"{name} has {path.stat().st_size} bytes, its manifest says {record['size']}"
            if file_hash(path) != record["sha256"]:
                return f"{name} differs from the sha256 in its manifest"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its manifest has no readable file list ({type(exc).__name__}: {exc})"
    return None


class Checkpointer:
    """Saves and restores the checkpoints of one run; refuses an output folder that holds a different run."""

    def __init__(
        self, out: Path, trainee: Trainee, method: UnlearningMethod, config: TrainConfig, data_hash: str
    ) -> None:
        self.out = out
        self.trainee = trainee
        self.config = config
        training = dataclasses.asdict(config)
        self.header = {
            "format": RUN_FORMAT,
            "method": method.name,
            "hyperparameters": method.hyperparameters(),
            "training": training,
            "trainee": trainee.describe(),
            "base_model": trainee.base_source,
            "seed": config.seed,
            "data_hash": data_hash,
            "code_version": CODE_VERSION,
        }
        # steps and save_every may change on resume (a run can be extended); everything else must match.
        same_run = {k: v for k, v in training.items() if k not in {"steps", "save_every"}}
        self.header["signature"] = content_hash(
            method.name, method.hyperparameters(), same_run, trainee.describe(), data_hash, CODE_VERSION
        )
        previous = out / RUN_FILE
        self.listed: list[int] = []  # the checkpoints an earlier session of this run saved (run.json)
        if previous.is_file():
            old = json.loads(previous.read_text(encoding="utf-8"))
            self.listed = [int(step) for step in old.get("checkpoints", [])]
            if old.get("signature") != self.header["signature"]:
                raise UserError(
                    f"{out} holds another run (method {old.get('method')}, other settings or data); "
                    "choose another --out or delete that folder"
                )
        out.mkdir(parents=True, exist_ok=True)

    def due(self, step: int) -> bool:
        every = self.config.save_every
        return step == self.config.steps or bool(every and step % every == 0)

    def existing(self) -> dict[int, Path]:
        return checkpoint_dirs(self.out)

    def save(self, step: int, optimizer: torch.optim.Optimizer, history: list[dict[str, float]]) -> Path:
        target = self.out / f"checkpoint-{step}"
        manifest = {
            **self.header,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "last": history[-1] if history else {},
        }
        with atomic_directory(target, {"step": step}) as scratch:
            self.trainee.save(scratch)
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
            }
            torch.save(state, scratch / TRAINER_STATE)
            atomic_write_json(scratch / MANIFEST, {**manifest, "files": file_records(scratch)})
        for other_step, other in self.existing().items():
            if other_step != step:
                (other / TRAINER_STATE).unlink(missing_ok=True)
        checkpoints = self.existing()
        atomic_write_json(
            self.out / RUN_FILE,
            {**self.header, "checkpoints": list(checkpoints), "final_step": max(checkpoints), "history": history},
        )
        return target

    def resume_point(self) -> Path | None:
        """The checkpoint to resume from: the latest trusted one with a trainer state, below any that fails its
        manifest or that run.json lists but is gone. Those are deleted (with a warning) so the run redoes them."""
        found = self.existing()
        untrusted = []
        for step in sorted(set(self.listed) | set(found)):
            problem = verify_checkpoint(found[step]) if step in found else "it is missing or incomplete"
            if problem:
                log.warning("checkpoint %d of %s is not trusted (%s): the run redoes it", step, self.out, problem)
                untrusted.append(step)
                if step in found:
                    shutil.rmtree(found[step], ignore_errors=True)
        first_bad = min(untrusted, default=None)
        resumable = []
        for step, path in found.items():
            if first_bad is not None and step > first_bad:
                # a later state would skip the redone steps if this session stops before it gets there
                (path / TRAINER_STATE).unlink(missing_ok=True)
            elif step not in untrusted and (path / TRAINER_STATE).is_file():
                resumable.append((step, path))
        if untrusted:
            start = f"step {resumable[-1][0]}" if resumable else "the start"
            log.warning("resuming %s from %s, below the first untrusted checkpoint (%d)", self.out, start, first_bad)
        return resumable[-1][1] if resumable else None

    def restore(self, checkpoint: Path, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict[str, float]]]:
        """Load weights, optimizer state and RNG of `checkpoint`; return its step and the run log so far."""
        self.trainee.load(checkpoint)
        state = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"]), list(state["history"])
