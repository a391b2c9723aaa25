"""The demo pipeline: a tiny-model experiment through the real code path (caching, status, names); the quick
experiment on the real SmolLM2 is in tests/integration/test_demo_real.py."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_models import save_tiny_model_dir

import core.unlearn.demo as demo
from core.common import Registry
from core.common.errors import UserError
from core.data.qa import DEMO_DIR, load_demo_splits
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.unlearn.demo import DemoExperiment
from core.unlearn.recipes import make_recipe

TEMPLATE = ModelSpec("demo:x", dtype="float32", device="cpu")
TINY = make_recipe(
    "tiny",
    learn_steps=3,
    oracle_steps=2,
    unlearn_steps=6,
    save_every=1,
    rmu_layer=1,
    forget_items=4,
    retain_items=6,
    batch_size=2,
    lora_rank=4,
    lora_alpha=8.0,
)


def demo_words() -> tuple[str, ...]:
    data = load_demo_splits()
    texts = [t for split in data.splits().values() for i in split for t in (i.question, i.answer)]
    return tuple(sorted({word for text in texts + data.refusals for word in text.split()}))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "base", words=demo_words())


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_base: Path) -> tuple[DemoExperiment, list[dict]]:
    experiment = DemoExperiment(TINY, DEMO_DIR, base_dir=tiny_base, root=tmp_path_factory.mktemp("demo"))
    updates: list[dict] = []
    experiment.build(progress=updates.append)
    return experiment, updates


def test_build_makes_every_stage_with_checkpoints_and_reports_progress(built) -> None:
    experiment, updates = built
    for stage in experiment.recipe.stages:
        assert experiment.is_built(stage.name)
        if stage.start == demo.TARGET:
            assert len(experiment.checkpoints(stage.name)) >= 6
    fractions = [u["fraction"] for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert next(u["stage"] for u in updates if u["state"] == "building") == "target"
    written = json.loads((experiment.root / demo.STATUS_FILE).read_text())
    assert written["state"] == "done" and written["fraction"] == 1.0
    status = experiment.status()
    assert status["complete"] and "unlearned" in status["models"] and "rmu@6" in status["models"]


def test_status_finds_what_is_built_once_until_the_runs_folder_changes(built, monkeypatch) -> None:
    """The sidebar reads the status on every interaction: what is built (which hashes the training data) is found
    again only when a stage folder comes or goes."""
    experiment, _ = built
    fresh = DemoExperiment(TINY, DEMO_DIR, base_dir=experiment.base_dir, root=experiment.root)
    expected = fresh.status()["models"]
    keys = []
    monkeypatch.setattr(DemoExperiment, "key", lambda self, name: keys.append(name) or "unbuilt")
    again = DemoExperiment(TINY, DEMO_DIR, base_dir=experiment.base_dir, root=experiment.root)
    assert again.status()["models"] == expected and keys == []
    (experiment.root / "runs" / "a-new-stage").mkdir()
    try:
        assert again.status()["models"] == ["base"] and keys  # re-read: every stage now looks unbuilt
    finally:
        (experiment.root / "runs" / "a-new-stage").rmdir()


def test_a_second_build_reuses_the_cache(built, monkeypatch) -> None:
    experiment, _ = built

    def fail(*args, **kwargs):
        raise AssertionError("nothing should be retrained")

    monkeypatch.setattr(demo, "train", fail)
    again = DemoExperiment(TINY, DEMO_DIR, base_dir=experiment.base_dir, root=experiment.root)
    again.build()
    assert again.available() == experiment.available()


def test_a_changed_recipe_rebuilds_only_what_it_touches(built) -> None:
    experiment, _ = built
    stages = tuple(replace(s, lr=s.lr * 2) if s.name == "npo" else s for s in TINY.stages)
    changed = DemoExperiment(replace(TINY, stages=stages), DEMO_DIR, base_dir=experiment.base_dir, root=experiment.root)
    assert not changed.is_built("npo")
    assert all(changed.is_built(name) for name in ("target", "oracle", "graddiff", "rmu"))
    learn_more = tuple(replace(s, steps=s.steps + 1) if s.name == "target" else s for s in TINY.stages)
    retargeted = DemoExperiment(
        replace(TINY, stages=learn_more), DEMO_DIR, base_dir=experiment.base_dir, root=experiment.root
    )
    assert [n for n in ("target", "oracle", "npo", "graddiff", "rmu") if retargeted.is_built(n)] == ["oracle"]


def test_names_resolve_to_base_plus_adapter_specs(built) -> None:
    experiment, _ = built
    template = replace(TEMPLATE, dtype="bfloat16", device="cpu")
    base = experiment.spec("base", template)
    assert base.source == str(experiment.base_dir) and base.adapter is None and base.dtype == "bfloat16"
    unlearned = experiment.spec("unlearned", template)
    assert unlearned == experiment.spec("npo", template)
    assert unlearned.adapter == str(experiment.checkpoints("npo")[6]) and unlearned.device == "cpu"
    assert experiment.spec("graddiff@2", template).adapter.endswith("checkpoint-2")
    with pytest.raises(UserError, match="no model 'nope'"):
        experiment.spec("nope", template)
    with pytest.raises(UserError, match="no checkpoint at step 99"):
        experiment.spec("npo@99", template)


def test_target_and_unlearned_share_one_backbone(built) -> None:
    experiment, _ = built
    pair = ModelPair.load(experiment.spec("target", TEMPLATE), experiment.spec("unlearned", TEMPLATE))
    assert pair.shares_backbone


def test_an_unbuilt_demo_says_so(tmp_path: Path, tiny_base: Path) -> None:
    experiment = DemoExperiment(TINY, DEMO_DIR, base_dir=tiny_base, root=tmp_path)
    status = experiment.status()
    assert status["state"] == "not built" and status["models"] == ["base"] and not status["complete"]
    with pytest.raises(UserError, match="python -m core demo"):
        experiment.spec("target", TEMPLATE, build=False)
    (tmp_path / demo.STATUS_FILE).write_text(json.dumps({"state": "building", "pid": 2**22 + 12345}))
    assert experiment.status()["state"] == "interrupted"


def test_evaluations_run_after_the_stages_once(tmp_path: Path, tiny_base: Path, monkeypatch) -> None:
    calls: list[Path] = []

    def count_models(experiment: DemoExperiment, out: Path, progress) -> None:
        calls.append(out)
        (out / "models.json").write_text(json.dumps(experiment.available()))
        progress(1.0, "counted")

    monkeypatch.setattr(demo, "DEMO_EVALUATIONS", Registry("demo evaluation"))
    demo.register_evaluation(count_models)
    recipe = replace(TINY, stages=TINY.stages[:2])  # target and npo
    DemoExperiment(recipe, DEMO_DIR, base_dir=tiny_base, root=tmp_path).build()
    DemoExperiment(recipe, DEMO_DIR, base_dir=tiny_base, root=tmp_path).build()
    (written,) = (tmp_path / "evaluations").glob("count_models-*/models.json")
    assert len(calls) == 1 and "npo" in json.loads(written.read_text())


class _Spawned:
    pid = 4242


def test_background_build_starts_once_and_never_over_a_live_or_finished_build(
    built, tiny_base: Path, tmp_path: Path, monkeypatch
) -> None:
    """`make run` calls `python -m core demo --background`: it spawns a detached build only when one is needed."""
    import subprocess
    import sys

    calls: list[dict] = []

    def spawn(command, **kwargs):
        calls.append({"command": command, **kwargs})
        return _Spawned()

    monkeypatch.setattr(subprocess, "Popen", spawn)
    fresh = DemoExperiment(TINY, DEMO_DIR, base_dir=tiny_base, root=tmp_path / "fresh")
    message = demo.start_background_build(fresh)
    assert len(calls) == 1 and calls[0]["command"] == [sys.executable, "-m", "core", "demo", "--nice", "10"]
    assert calls[0]["start_new_session"] is True
    assert "4242" in message and (tmp_path / "fresh" / "build.log").is_file()

    # a live builder (this very process stands in for it) is left alone
    status = {"state": "building", "stage": "target", "fraction": 0.1, "message": "target: step 1/3", "pid": 0}
    (tmp_path / "fresh" / demo.STATUS_FILE).write_text(json.dumps({**status, "pid": os.getpid()}))
    assert "being built" in demo.start_background_build(fresh) and len(calls) == 1
    # a dead builder's status reads "interrupted": the build is started again (it resumes from checkpoints)
    (tmp_path / "fresh" / demo.STATUS_FILE).write_text(json.dumps({**status, "pid": 2**22 + 12345}))
    demo.start_background_build(fresh, quick=True)
    assert len(calls) == 2 and calls[1]["command"][-1] == "--quick"

    experiment, _ = built  # finished: nothing to do
    assert "already built" in demo.start_background_build(experiment) and len(calls) == 2


def test_a_build_lowers_its_own_cpu_priority_first_when_asked(monkeypatch, capsys) -> None:
    """The detached build runs `core demo --nice 10`: the niceness is taken before anything else happens (so every
    training thread, started later, inherits it)."""
    from core import cli
    from core.cli import demo as demo_cli

    order: list[tuple] = []
    monkeypatch.setattr(os, "nice", lambda step: order.append(("nice", step)), raising=False)
    monkeypatch.setattr(demo_cli, "start_background_build", lambda *args: order.append(("build",)) or "started")
    assert cli.main(["demo", "--nice", "3", "--background"]) == 0
    assert order == [("nice", 3), ("build",)] and "started" in capsys.readouterr().out
    order.clear()
    assert cli.main(["demo", "--background"]) == 0  # a foreground or plain run keeps its priority
    assert order == [("build",)]
