"""core.data.examples: the Probe page's one-click examples are the demo forget and retain items, in file order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.common.errors import UserError
from core.data.examples import demo_examples
from core.data.qa import DEMO_DIR


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_demo_examples_are_the_forget_then_retain_items() -> None:
    expected = [("forget", r["question"], r["answer"]) for r in read_jsonl(DEMO_DIR / "forget.jsonl")]
    expected += [("retain", r["question"], r["answer"]) for r in read_jsonl(DEMO_DIR / "retain.jsonl")]
    examples = demo_examples()
    assert [(e.split, e.question, e.answer) for e in examples] == expected
    assert examples[0].label == f"forget · {expected[0][1]}"


def test_demo_examples_need_both_splits(tmp_path: Path) -> None:
    (tmp_path / "forget.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(UserError, match=r"missing retain\.jsonl"):
        demo_examples(tmp_path)
