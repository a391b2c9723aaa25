"""The Attribution page starts from the baseline measured most faithful for its default method (docs/CAUSAL.md): the
space token where the tokenizer has it as one token, pad where it does not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from apptest_pages import open_with_pair

from core.analyses.attribution.settings import BASELINES, DEFAULT_BASELINE, FALLBACK_BASELINE, default_baseline
from tests.tiny_models import TinyTokenizer, save_tiny_model_dir


class _TwoTokenSpace(TinyTokenizer):
    """A tokenizer whose space is two tokens: no neutral baseline."""

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = super().__call__(text, add_special_tokens).input_ids
        return SimpleNamespace(input_ids=ids + ids if text == " " else ids)


def test_default_baseline_is_the_space_token_where_there_is_one():
    assert (DEFAULT_BASELINE, FALLBACK_BASELINE) == ("neutral", "pad")
    tokenizer = TinyTokenizer()
    assert default_baseline(tokenizer) == "neutral"
    assert BASELINES["neutral"](tokenizer) == tokenizer(" ", add_special_tokens=False).input_ids[0]
    assert default_baseline(_TwoTokenSpace()) == "pad"


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


def test_the_page_starts_from_the_default_baseline(tmp_path: Path) -> None:
    dirs = save_tiny_model_dir(tmp_path / "base", seed=0), save_tiny_model_dir(tmp_path / "unlearned", seed=1)
    at, pair = open_with_pair("attribution", dirs)
    assert not at.exception
    single_space = len(pair.tokenizer(" ", add_special_tokens=False).input_ids) == 1
    expected = "neutral" if single_space else "pad"
    assert at.selectbox(key="attribution_baseline").value == default_baseline(pair.tokenizer) == expected
