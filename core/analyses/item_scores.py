"""Per-item metrics of a QA set under both sides of a pair: answer probability, its shift, and the truth ratio.

Every question–answer (and, for the truth ratio, paraphrased and perturbed answers) is one request to
core.analyses.probe.score, which runs one forward pass per model per batch; the result is a small frame, never tensors.
Definitions follow TOFU: prob = exp(−avg_loss) over the answer tokens; truth ratio = exp(−mean_j avg_loss(wrong_j))
/ exp(−avg_loss(paraphrased answer)), with the answer itself standing in where a set has no paraphrase.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.analyses.probe import ProbeRequest, ProbeResult, score
from core.common.cache import content_hash
from core.common.errors import UserError
from core.common.limits import MAX_QA_FILE_BYTES, MiB
from core.data.qa import FILE_SUFFIXES, QADataset, QAItem, load_qa_dataset
from core.data.uploads import store_files
from core.evaluation import metrics
from core.models.pair import SIDES, ModelPair

COLUMNS = [
    "index", "question", "answer", "answer_tokens", "logprob_base", "logprob_unlearned", "delta",
    "prob_base", "prob_unlearned", "truth_ratio_base", "truth_ratio_unlearned",
]  # fmt: skip


def dataset_key(dataset: QADataset) -> str:
    """A short hash of the set's content: scores computed for one set are never shown for another."""
    return content_hash(dataset.to_dict())


def load_uploaded_dataset(name: str, content: bytes) -> QADataset:
    """An uploaded JSONL / JSON / CSV / parquet QA file, validated like one read from disk."""
    suffix = Path(name).suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise UserError(f"{name}: unsupported format '{suffix}' (expected {', '.join(FILE_SUFFIXES)})")
    if len(content) > MAX_QA_FILE_BYTES:  # refused before it is written to disk, as the reader would refuse it
        raise UserError(
            f"{name}: {len(content) / MiB:,.1f} MiB is more than the {MAX_QA_FILE_BYTES / MiB:,.0f} MiB allowed "
            "for a QA set file"
        )
    folder = store_files([(name, content)])
    return load_qa_dataset(folder / name, split=Path(name).stem)


def _requests(
    dataset: QADataset, limit: int | None, truth_ratio: bool
) -> tuple[list[ProbeRequest], list[tuple[int, str]]]:
    """All requests, and for each its (item position, role): 'answer', 'paraphrased' or 'perturbed'."""
    requests: list[ProbeRequest] = []
    owners: list[tuple[int, str]] = []
    for position, item in enumerate(dataset.items[:limit]):
        requests.append(ProbeRequest(item.question, item.answer))
        owners.append((position, "answer"))
        if truth_ratio and item.perturbed_answer:
            requests.append(ProbeRequest(item.question, item.paraphrased_answer or item.answer))
            owners.append((position, "paraphrased"))
            for wrong in item.perturbed_answer:
                requests.append(ProbeRequest(item.question, wrong))
                owners.append((position, "perturbed"))
    return requests, owners


def _avg_loss(result: ProbeResult, side: str) -> float:
    return float(-np.mean([getattr(token, f"logprob_{side}") for token in result.tokens]))


def score_items(
    pair: ModelPair,
    dataset: QADataset,
    *,
    chat: bool = True,
    batch_size: int = 8,
    limit: int | None = None,
    truth_ratio: bool = True,
    progress: Callable[[float], None] | None = None,
) -> pd.DataFrame:
    """One row per item (the first `limit`): answer log-prob under both models, Δ, probabilities, truth ratios."""
    if limit is not None and limit < 1:
        raise UserError("score at least one item")
    requests, owners = _requests(dataset, limit, truth_ratio)
    # similar lengths share a batch, so little of each forward pass is spent on padding
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt) + len(requests[i].answer or ""))
    scored = score(pair, [requests[i] for i in order], chat=chat, top_k=1, batch_size=batch_size, progress=progress)
    by_request = dict(zip(order, scored, strict=True))
    grouped: dict[int, dict[str, list[ProbeResult]]] = {}
    for i, (position, role) in enumerate(owners):
        grouped.setdefault(position, {}).setdefault(role, []).append(by_request[i])
    rows = [_row(dataset.items[position], roles) for position, roles in sorted(grouped.items())]
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(item: QAItem, roles: dict[str, list[ProbeResult]]) -> dict[str, Any]:
    answer = roles["answer"][0]
    row = {
        "index": item.index,
        "question": item.question,
        "answer": item.answer,
        "answer_tokens": len(answer.tokens),
        "logprob_base": answer.answer_logprob_base,
        "logprob_unlearned": answer.answer_logprob_unlearned,
        "delta": answer.delta,
    }
    for side in SIDES:
        row[f"prob_{side}"] = float(metrics.probability(_avg_loss(answer, side)))
        row[f"truth_ratio_{side}"] = np.nan
        if "perturbed" in roles:
            paraphrased = [_avg_loss(roles["paraphrased"][0], side)]
            wrong = [[_avg_loss(result, side) for result in roles["perturbed"]]]
            row[f"truth_ratio_{side}"] = float(metrics.truth_ratio(paraphrased, wrong)[0])
    return row


def filter_items(frame: pd.DataFrame, text: str = "", min_abs_delta: float = 0.0) -> pd.DataFrame:
    """Rows whose question or answer contains `text` (any case, literally) and whose |Δ| is at least the bound."""
    keep = frame["delta"].abs() >= min_abs_delta
    needle = text.strip()
    if needle:
        found = frame["question"].str.contains(needle, case=False, regex=False)
        keep &= found | frame["answer"].str.contains(needle, case=False, regex=False)
    return frame[keep].reset_index(drop=True)
