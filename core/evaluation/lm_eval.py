"""`--lm-eval TASK…`: lm-evaluation-harness tasks on a loaded model, written as open-unlearning's LMEval evaluator
writes them (src/evals/lm_eval.py @ d3d7cf9): `LMEval_EVAL.json` ({task: the harness's per-sample records}) and
`LMEval_SUMMARY.json` ({"task/metric": value}, ",none" filters stripped), beside the model's TOFU files, where the
Tradeoffs page reads them (core.evaluation.ingest).

The model object is wrapped in the harness's HFLM (never reloaded from a hub). A task is a harness task name, or a
task YAML file (a local task; `world_facts_mcq` names assets/lm_eval/world_facts_mcq.yaml, the demo's world facts
as a four-way multiple choice). Nothing is downloaded by this module; a hub task whose data is not cached fails
with the harness's own error, reported as a UserError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.common.cache import atomic_write_text
from core.common.errors import UserError
from core.common.paths import ASSETS

log = logging.getLogger(__name__)

LOCAL_TASKS = ASSETS / "lm_eval"
DEMO_DATA = ASSETS / "demo"
BENCHMARK = "LMEval"


def task_config(task: str) -> str | dict[str, Any]:
    """A task name for the harness, or a local task YAML read into a config dict (relative data files resolved
    against the demo data folder for the shipped tasks, else against the YAML's folder)."""
    import yaml

    path = LOCAL_TASKS / f"{task}.yaml" if (LOCAL_TASKS / f"{task}.yaml").is_file() else Path(task)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return task
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"lm-eval task file {path}: {error}") from None
    if not isinstance(config, dict) or "task" not in config:
        raise UserError(f"lm-eval task file {path}: expected a mapping with a 'task' name")
    base = DEMO_DATA if path.parent == LOCAL_TASKS else path.parent
    files = config.get("dataset_kwargs", {}).get("data_files")
    if isinstance(files, dict):
        config["dataset_kwargs"]["data_files"] = {
            split: str(base / name) if not Path(name).is_absolute() else name for split, name in files.items()
        }
    return config


def summarize(results: dict[str, Any], name: str) -> dict[str, Any]:
    """open-unlearning's LMEval summary of one task: `name/metric` for each metric (its group's where the task is a
    group), ",none"-style filter suffixes stripped, the alias left out."""
    metrics = results.get("groups", {}).get(name) or results.get("results", {}).get(name, {})
    summary = {}
    for key, value in metrics.items():
        if key == "alias":
            continue
        try:
            summary[f"{name}/{key.split(',', 1)[0].strip()}"] = float(value)
        except (TypeError, ValueError):
            summary[f"{name}/{key.split(',', 1)[0].strip()}"] = value
    return summary


def run_lm_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    out: Path | None = None,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run each task on the loaded model; write LMEval_EVAL.json and LMEval_SUMMARY.json into `out` when given.
    Returns the summary."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise UserError(f"--lm-eval needs lm-evaluation-harness: pip install lm-eval==0.4.13 ({error})") from None
    from lm_eval.tasks import TaskManager

    model.eval()
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    logs: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    configs = [task_config(task) for task in tasks]
    # indexing the harness's thousands of built-in task files takes minutes on a small CPU: only when one is named
    manager = TaskManager(include_defaults=not all(isinstance(config, dict) for config in configs))
    for config in configs:
        name = config["task"] if isinstance(config, dict) else config
        try:
            results = simple_evaluate(
                model=wrapped, tasks=[config], limit=limit, log_samples=True, task_manager=manager
            )
        except (OSError, ValueError, KeyError, ConnectionError) as error:
            raise UserError(f"lm-eval task {name}: {str(error).splitlines()[0] if str(error) else error!r}") from None
        if results is None:
            raise UserError(f"lm-eval task {name} returned no results")
        logs[name] = results.get("samples", {}).get(name, [])
        summary |= summarize(results, name)
        log.info("lm-eval %s: %s", name, summarize(results, name))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"{BENCHMARK}_EVAL.json", json.dumps(logs, indent=4, default=str))
        atomic_write_text(out / f"{BENCHMARK}_SUMMARY.json", json.dumps(summary, indent=4))
    return summary


def run_lm_eval_all(models: Sequence[Any], tasks: Sequence[str], out_dir: Path, batch_size: int = 8) -> None:
    """The tasks on every model of an evaluate call, each written beside its TOFU files."""
    from core.evaluation.candidates import resolve_candidates
    from core.evaluation.evaluate import evaluation_folder
    from core.evaluation.loading import ModelLoader

    loader = ModelLoader()
    for candidate in resolve_candidates(models):
        with loader.open(candidate) as (model, tokenizer):
            folder = evaluation_folder(Path(out_dir), candidate.name, candidate.step)
            run_lm_eval(model, tokenizer, tasks, folder, batch_size)
    loader.close()
