"""The dashboard tests' tiny model pair on disk (one per test module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import save_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_pair_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return save_tiny_model_dir(root / "base", seed=0), save_tiny_model_dir(root / "unlearned", seed=1)
