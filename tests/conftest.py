"""Shared fixtures: a tiny random Llama (unit tier) and the real embedded model (integration tier)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_models import TinyTokenizer, make_tiny_llama, save_tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# tests/unit carries no marker; tests/cuda runs only where a CUDA GPU is (its tests skip themselves elsewhere)
TIERS = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e, "cuda": pytest.mark.cuda}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: runs on a CUDA GPU, against CPU float32 (set by folder: tests/cuda)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test's tier is its folder: tests/unit (tiny models), tests/integration (the real SmolLM2), tests/e2e (a
    real Chromium against the running app), tests/cuda (a CUDA GPU); the markers let `-m` pick tiers across
    folders."""
    tests = Path(__file__).resolve().parent
    for item in items:
        tier = item.path.resolve().relative_to(tests).parts[0]
        if tier in TIERS:
            item.add_marker(TIERS[tier])


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): on a shared 2-core
    machine, tiny models and short training runs go far faster than with two threads fighting for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_tokenizer() -> TinyTokenizer:
    return TinyTokenizer()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from core.models.embedded import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return save_tiny_model_dir(tmp_path / "tiny")


@pytest.fixture(scope="module")
def tiny_pair_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny base and unlearned model on disk, one pair per test module (the page tests load it)."""
    root = tmp_path_factory.mktemp("pair")
    return save_tiny_model_dir(root / "base", seed=0), save_tiny_model_dir(root / "unlearned", seed=1)


@pytest.fixture
def fresh_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty Streamlit caches (st caches are shared by every AppTest in the process) and folder walks, and a cache
    home and uploads folder in tmp, with no data roots but the project's own (each dashboard test module's
    autouse fixture starts from this)."""
    import streamlit as st

    from core.evaluation import results

    st.cache_data.clear()
    st.cache_resource.clear()
    results.clear_walks()
    monkeypatch.setenv("ULENS_UPLOADS", str(tmp_path / "uploads"))
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(results.DATA_ROOTS_ENV, raising=False)
