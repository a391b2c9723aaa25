"""Who produced the numbers in a folder (RunIdentity): model, method and step, inferred from folder names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
_WRAPPER_FOLDER = re.compile(r"^(evals(_.+)?|eval_results|ds_size\d+|checkpoint-\d+)$")
_METHODS = (
    "GradAscent", "GradDiff", "SimNPO", "NPO", "IdkDPO", "IdkNLL", "DPO", "RMU", "UNDIAL", "AltPO", "WGA",
    "SatImp", "CE-U", "PDU", "GRU", "RepNoise", "ELM", "KL",
)  # fmt: skip
_METHOD_ALIASES = {"grad_ascent": "GradAscent", "grad_diff": "GradDiff", "idk": "IdkNLL"}
_BASELINES = ((r"full|target", "target"), (r"retain\d+|retrain", "oracle"), (r"base", "base"))


@dataclass(frozen=True)
class RunIdentity:
    """Who produced the numbers in one folder: model (the run's folder name), method, training step."""

    model: str
    method: str
    step: int | None


def infer_method(name: str) -> str:
    """An unlearning method named in a run's folder name, 'target'/'oracle'/'base' for baselines, else the name."""
    for alias, method in [*_METHOD_ALIASES.items(), *((m, m) for m in _METHODS)]:
        if re.search(rf"(?:^|[_\-/.]){re.escape(alias)}(?:$|[_\-/.])", name, re.IGNORECASE):
            return method
    for pattern, method in _BASELINES:
        if re.search(rf"(?:^|[_\-/.])(?:{pattern})(?:$|[_\-/.])", name, re.IGNORECASE):
            return method
    return name


def infer_run(folder: Path) -> RunIdentity:
    """Model = the nearest folder that is not an evals / checkpoint-<step> / eval_results / ds_size wrapper."""
    step = None
    model = None
    for part in reversed(Path(folder).absolute().parts):
        match = CHECKPOINT_FOLDER.match(part)
        if match and step is None:
            step = int(match.group(1))
        if not _WRAPPER_FOLDER.match(part):
            model = part
            break
    model = model or "run"
    return RunIdentity(model, infer_method(model), step)
