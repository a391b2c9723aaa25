"""Inputs and comparisons shared by the sweep tests: tiny QA splits over the tiny models' words, result files
read back, JSON trees compared number by number."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tiny_models import EPS32

from core.data.qa import QADataset, QAItem, SplitData

WORDS = (*(f"w{i}" for i in range(40)), "the", "capital", "of", "is", "?", ".")
# The sweep's numbers come from the same code on the same float32 weights; only the thread count of the matrix
# products may differ (a Ray worker runs one thread). A float32 sum of n terms reordered moves by at most about
# n·eps relative; the reductions here run over at most 64 terms (hidden 32, intermediate 64), and the metrics are
# smooth in the log-probabilities, so 64·eps ≈ 7.6e-6 bounds the relative change; the 1e-6 absolute
# tolerance is checked on top, for numbers of order one.
RTOL = 64 * EPS32
ATOL = 1e-6


def word_splits() -> SplitData:
    def items(start: int) -> list[QAItem]:
        return [
            QAItem(i, f"the capital of w{i} ?", f"the capital is w{i + 1} .", paraphrased_answer=f"w{i + 1} is .",
                   perturbed_answer=[f"the capital is w{i + 2} .", f"the capital is w{i + 3} ."])
            for i in range(start, start + 2)
        ]  # fmt: skip

    return SplitData(
        forget=QADataset("w", "forget", items(0)),
        retain=QADataset("w", "retain", items(4)),
        holdout=QADataset("w", "holdout", items(8)),
        world_facts=QADataset("w", "world_facts", items(12)),
    )


def result_files(out: Path) -> dict[str, Any]:
    """Every result file under `out` (not the sweep's own records), parsed, by path relative to `out`."""
    return {
        str(path.relative_to(out)): json.loads(path.read_text())
        for path in sorted(out.rglob("TOFU_*.json"))
        if ".sweep" not in path.parts
    }


def assert_close(a: Any, b: Any, where: str = "") -> None:
    """Equal JSON trees: same keys and lengths, equal strings and nulls, numbers within RTOL/ATOL."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for key in a:
            assert_close(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{k}]")
    elif isinstance(a, float) and isinstance(b, float | int):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def write_split_folder(data: SplitData, folder: Path) -> Path:
    """The splits as a folder of JSONL files, as `--data DIR` reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, qa in data.splits().items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(item.to_record()) + "\n" for item in qa))
    return folder
