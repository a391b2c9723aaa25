"""core.analyses.item_scores: per-item numbers equal an independent item-by-item computation from
core.analyses.probe.score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_models import save_tiny_model_dir

from core.analyses.item_scores import COLUMNS, dataset_key, filter_items, load_uploaded_dataset, score_items
from core.analyses.probe import ProbeRequest, score
from core.common.errors import UserError
from core.data.qa import QADataset, QAItem, load_qa_dataset
from core.models.pair import ModelPair
from core.models.spec import ModelSpec

ITEMS = [
    {"index": 7, "question": "the capital of france is", "answer": "paris",
     "paraphrased_answer": "paris w1", "perturbed_answer": ["w1", "w2 w3", "of w4"]},
    {"index": 8, "question": "w5 w6 w7 of the", "answer": "capital w8 w9 w10"},
    {"index": 9, "question": "is w11 capital", "answer": "w12 france",
     "perturbed_answer": ["w13 paris", "the w14 w15 w16"]},
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> ModelPair:
    root = tmp_path_factory.mktemp("pair")
    base, unlearned = save_tiny_model_dir(root / "base", seed=0), save_tiny_model_dir(root / "unlearned", seed=1)
    return ModelPair.load(ModelSpec(str(base)), ModelSpec(str(unlearned)))


@pytest.fixture
def dataset(tmp_path: Path) -> QADataset:
    path = tmp_path / "forget.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in ITEMS))
    return load_qa_dataset(path)


def one_by_one(pair: ModelPair, question: str, answer: str, chat: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token log-probs of one answer under base and unlearned, scored alone (no batching)."""
    result = score(pair, [ProbeRequest(question, answer)], chat=chat)[0]
    return (np.array([t.logprob_base for t in result.tokens]), np.array([t.logprob_unlearned for t in result.tokens]))


def test_score_items_matches_item_by_item_scores(tiny_pair: ModelPair, dataset: QADataset) -> None:
    chat = True
    seen: list[float] = []
    frame = score_items(tiny_pair, dataset, chat=chat, batch_size=3, progress=seen.append)
    assert list(frame.columns) == COLUMNS and list(frame["index"]) == [7, 8, 9]
    assert seen[-1] == 1.0 and seen == sorted(seen)
    for row, item in zip(frame.itertuples(index=False), dataset, strict=True):
        base, unlearned = one_by_one(tiny_pair, item.question, item.answer, chat)
        assert row.answer_tokens == len(base)
        assert row.logprob_base == pytest.approx(base.sum(), abs=1e-5)
        assert row.delta == pytest.approx(unlearned.sum() - base.sum(), abs=1e-5)
        assert row.prob_base == pytest.approx(math.exp(base.mean()), rel=1e-5)
        assert row.prob_unlearned == pytest.approx(math.exp(unlearned.mean()), rel=1e-5)
        if not item.perturbed_answer:
            assert math.isnan(row.truth_ratio_base) and math.isnan(row.truth_ratio_unlearned)
            continue
        paraphrased = one_by_one(tiny_pair, item.question, item.paraphrased_answer or item.answer, chat)
        wrong = [one_by_one(tiny_pair, item.question, answer, chat) for answer in item.perturbed_answer]
        for side, column in ((0, row.truth_ratio_base), (1, row.truth_ratio_unlearned)):
            expected = math.exp(np.mean([w[side].mean() for w in wrong])) / math.exp(paraphrased[side].mean())
            assert column == pytest.approx(expected, rel=1e-4)


def test_score_items_limit_and_no_truth_ratio(tiny_pair: ModelPair, dataset: QADataset) -> None:
    frame = score_items(tiny_pair, dataset, chat=False, limit=2, truth_ratio=False)
    assert list(frame["index"]) == [7, 8]
    assert frame["truth_ratio_base"].isna().all()
    with pytest.raises(UserError, match="at least one"):
        score_items(tiny_pair, dataset, limit=0)


def test_filter_items_by_text_and_delta() -> None:
    frame = pd.DataFrame(
        {"question": ["Where was Ana born?", "Who is Bo?", "What?"], "answer": ["Lima", "A [poet]", "x"],
         "delta": [-3.0, 0.5, -0.1]}
    )  # fmt: skip
    assert list(filter_items(frame, "ana")["answer"]) == ["Lima"]
    assert list(filter_items(frame, "[POET]")["answer"]) == ["A [poet]"]  # literal, not a regex
    assert list(filter_items(frame, "", 0.4)["answer"]) == ["Lima", "A [poet]"]
    assert len(filter_items(frame)) == 3


def test_load_uploaded_dataset_reads_and_reports_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULENS_UPLOADS", str(tmp_path))
    content = "\n".join(json.dumps(item) for item in ITEMS).encode()
    dataset = load_uploaded_dataset("forget.jsonl", content)
    assert dataset.split == "forget" and [item.index for item in dataset] == [7, 8, 9]
    csv = b"question,answer\nWho?,Bo\n"
    assert load_uploaded_dataset("retain.csv", csv).items[0].answer == "Bo"
    with pytest.raises(UserError, match=r"forget\.jsonl:2: not valid JSON"):
        load_uploaded_dataset("forget.jsonl", b'{"question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(UserError, match=r"unsupported format '\.txt'"):
        load_uploaded_dataset("notes.txt", b"hello")


def test_dataset_key_follows_content() -> None:
    first = QADataset("a", "forget", [QAItem(0, "q", "a")])
    assert dataset_key(first) == dataset_key(QADataset("a", "forget", [QAItem(0, "q", "a")]))
    assert dataset_key(first) != dataset_key(QADataset("a", "forget", [QAItem(0, "q", "b")]))
