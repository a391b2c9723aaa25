"""The demo's stage keys do not change when the embedded base folder is found lazily (mid-build)."""

from __future__ import annotations

from pathlib import Path

import core.unlearn.demo as demo
from core.unlearn.demo import RECIPES, DemoExperiment


def test_a_stage_key_is_the_same_before_and_after_the_base_folder_is_known(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo, "ensure_embedded_model", lambda: tmp_path / "embedded")
    experiment = DemoExperiment(RECIPES["quick"], root=tmp_path / "demo")
    before = {name: experiment.run_dir(name) for name in ("target", "npo")}
    assert experiment.base_dir == tmp_path / "embedded"  # resolved now, as building a stage does
    assert {name: experiment.run_dir(name) for name in ("target", "npo")} == before
    fresh = DemoExperiment(RECIPES["quick"], root=tmp_path / "demo")  # e.g. the dashboard resolving demo:NAME
    assert {name: fresh.run_dir(name) for name in ("target", "npo")} == before
