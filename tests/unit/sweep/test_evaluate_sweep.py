"""`evaluate --ray` on a local two-CPU Ray cluster with tiny random models: the result files equal a single-process
run's, a task whose worker is killed mid-run is retried without recomputing finished ones, a rerun computes
nothing, and a bad model fails alone with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sweep_faults
from sweep_inputs import WORDS, assert_close, result_files, word_splits
from tiny_models import save_tiny_model_dir

from core.evaluation.evaluate import EvalSettings, evaluate
from core.evaluation.ingest import ingest
from core.models.spec import ModelSpec
from core.sweep.cluster import ClusterSettings
from core.sweep.evaluate import evaluate_sweep
from core.sweep.progress import read_progress
from core.sweep.store import TaskStore

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("models")
    return [save_tiny_model_dir(root / f"m{seed}", seed=seed, words=WORDS) for seed in range(3)]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))


def calls(models: list[Path]) -> list[str]:
    log = models[0].parent / sweep_faults.CALLS
    return sorted(log.read_text().split()) if log.exists() else []


def test_sweep_files_equal_the_single_process_run(ray_cluster, models, tmp_path: Path) -> None:
    specs = [ModelSpec(str(path)) for path in models]
    settings = EvalSettings(batch_size=3)
    single = evaluate(specs, word_splits(), oracle="m0", settings=settings, out_dir=tmp_path / "single", cache=False)
    swept = evaluate_sweep(specs, word_splits(), oracle="m0", settings=settings, out_dir=tmp_path / "sweep",
                           cluster=ClusterSettings(retries=0), show=False)  # fmt: skip
    assert swept.failures == []
    expected, got = result_files(tmp_path / "single"), result_files(tmp_path / "sweep")
    assert (
        sorted(got) == sorted(expected) == [f"m{k}/TOFU_{kind}.json" for k in range(3) for kind in ("EVAL", "SUMMARY")]
    )
    assert_close(got, expected)
    assert got["m0/TOFU_SUMMARY.json"]["forget_quality"] == 1.0  # the oracle against itself: the reference is in
    assert [(e.model, e.step) for e in swept.result.evaluations] == [(e.model, e.step) for e in single.evaluations]
    assert swept.result.oracle == single.oracle == "m0"
    read = ingest([tmp_path / "sweep"])  # the sweep's own records beside the results do not disturb a reader
    assert read.warnings == [] and len(read.runs()) == 3


def test_a_killed_task_is_retried_and_finished_ones_are_not_recomputed(ray_cluster, models, tmp_path, monkeypatch):
    monkeypatch.setattr("core.sweep.evaluate.evaluate_work", sweep_faults.logged_work)
    (models[1].parent / sweep_faults.CALLS).unlink(missing_ok=True)
    (models[1] / sweep_faults.KILL_MARKER).touch()
    specs = [ModelSpec(str(path)) for path in models]
    out = tmp_path / "out"
    settings = EvalSettings(batch_size=1)  # several batches: the kill lands mid-run, after the first one
    first = evaluate_sweep(specs, word_splits(), settings=settings, out_dir=out, cluster=ClusterSettings(retries=2),
                           show=False)  # fmt: skip
    assert first.failures == []
    assert not (models[1] / sweep_faults.KILL_MARKER).exists()  # it did die once
    assert calls(models) == ["m0", "m1", "m1", "m2"]  # m1 twice, the others once: nothing finished ran again
    progress = read_progress(out / ".sweep" / "progress.json")
    assert progress is not None and progress["state"] == "finished"
    assert {t["label"]: t["attempt"] for t in progress["tasks"]} == {"m0": 1, "m1": 2, "m2": 1}
    files = result_files(out)
    assert len(files) == 6

    again = evaluate_sweep(specs, word_splits(), settings=settings, out_dir=out, cluster=ClusterSettings(), show=False)
    assert calls(models) == ["m0", "m1", "m1", "m2"]  # a rerun computes nothing
    assert all(e.cached for e in again.result.evaluations)
    assert result_files(out) == files
    single = evaluate(specs, word_splits(), settings=settings, out_dir=tmp_path / "single", cache=False)
    assert_close(files, result_files(tmp_path / "single"))
    assert len(single.evaluations) == 3


def test_a_bad_model_fails_its_task_and_the_others_finish(ray_cluster, models, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    missing = tmp_path / "missing"
    specs = [ModelSpec(str(models[0])), ModelSpec(str(broken)), ModelSpec(str(missing)), ModelSpec(str(models[2]))]
    out = tmp_path / "out"
    swept = evaluate_sweep(specs, word_splits(), out_dir=out, cluster=ClusterSettings(retries=1), show=False)
    failed = dict(swept.failures)
    assert sorted(failed) == [str(missing), "broken"]
    assert failed["broken"].startswith(f"could not load the model in {broken}")  # the loader's UserError, in the worker
    assert str(missing) in failed[str(missing)]  # refused on the driver: the folder does not exist
    assert [e.model for e in swept.result.evaluations] == ["m0", "m2"]
    assert sorted(result_files(out)) == [f"m{k}/TOFU_{kind}.json" for k in (0, 2) for kind in ("EVAL", "SUMMARY")]
    message = swept.failure_message()
    assert message is not None and message.startswith("2 task(s) failed") and "broken" in message
    store = TaskStore.beside(out)
    progress = read_progress(store.root / "progress.json")
    assert progress is not None and progress["state"] == "failed"
    assert progress["counts"] == {"queued": 0, "running": 0, "done": 2, "skipped": 0, "failed": 1}
    attempts = {t["label"]: t["attempt"] for t in progress["tasks"]}
    assert attempts["broken"] == 1  # a bad input is not retried (only a dead worker or a transient error is)


def test_a_task_no_node_can_hold_is_refused_not_left_waiting(ray_cluster, models, tmp_path: Path) -> None:
    """Ray would wait forever for a node with more memory or GPUs than any has; the sweep says so at once."""
    specs = [ModelSpec(str(models[0]))]
    huge = evaluate_sweep(specs, word_splits(), out_dir=tmp_path / "a", show=False,
                          cluster=ClusterSettings(memory_bytes=2**60))  # fmt: skip
    [(label, reason)] = huge.failures
    assert label == "m0" and reason.startswith("m0 needs about") and "the largest node offers Ray" in reason
    gpus = evaluate_sweep(specs, word_splits(), out_dir=tmp_path / "b", cluster=ClusterSettings(gpus=1), show=False)
    assert gpus.failures == [("m0", "m0 asks for 1 GPUs, but the largest node has 0 (see --ray-gpus)")]
    assert huge.result.evaluations == gpus.result.evaluations == []


def test_a_task_killed_on_every_attempt_fails_after_its_retries(ray_cluster, models, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("core.sweep.evaluate.evaluate_work", sweep_faults.logged_work)
    (models[2].parent / sweep_faults.CALLS).unlink(missing_ok=True)
    (models[2] / sweep_faults.KILL_ALWAYS).touch()
    try:
        swept = evaluate_sweep([ModelSpec(str(models[2]))], word_splits(), out_dir=tmp_path / "out", show=False,
                               settings=EvalSettings(batch_size=1), cluster=ClusterSettings(retries=1))  # fmt: skip
    finally:
        (models[2] / sweep_faults.KILL_ALWAYS).unlink()
    reason = "its worker process died on each of 2 attempts (killed, out of memory, or node lost)"
    assert swept.failures == [("m2", reason)]
    assert calls(models) == ["m2", "m2"]  # the first attempt and one retry
