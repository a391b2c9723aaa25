"""Every file reader fed hostile files — truncated, not UTF-8, nested '[' × 100,000, one line bigger than the file
bound, a text longer than the text bound — answers with a clear one-line message naming the file: a UserError
for the QA readers (core.data) and the direct result readers, a warning for ingest (which reads the other files
of a run on, by design), never a traceback and never a long parse.

Each reader gets a valid file first (it must read), then each bad variant of that same file.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from core import data, ingest, limits
from core.errors import UserError
from core.robustness import RobustnessResult

MARK = "Zanzibar"  # inside a string / quoted cell of every valid file: truncating there leaves it unterminated
QA = [
    {"index": 0, "question": f"Where is {MARK}, really?", "answer": "Off the coast.", "perturbed_answer": ["No"]},
    {"index": 1, "question": "Who?", "answer": "Bo"},
]
SECONDS = 10.0  # far more than any of these takes when refused early; a parse of a huge input takes minutes


def qa_csv() -> bytes:
    lines = ["index,question,answer,perturbed_answer", f'0,"Where is {MARK}, really?",Off the coast.,"[""No""]"']
    return ("\n".join([*lines, "1,Who?,Bo,", ""])).encode()


def qa_parquet() -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(QA).to_parquet(buffer)
    return buffer.getvalue()


LEGACY = {
    "avg_gt_loss": {"0": 1.0},
    "average_perturb_loss": {"0": [2.0, 2.5]},
    "avg_paraphrased_loss": {"0": 1.2},
    "rougeL_recall": {"0": 0.5},
    "generated_text": {"0": [f"q {MARK}", "a"]},
}
EVAL = {"forget_Q_A_Prob": {"agg_value": 0.5, "value_by_index": {"0": {"prob": 0.5, "note": MARK}}}}
AGGREGATE = f'Method,Model Utility,Forget Quality\n"Grad{MARK}Ascent",0.5,0.1\n'.encode()
INGESTED = ingest.IngestResult(
    *(pd.DataFrame(columns=columns) for columns in (ingest.SUMMARY_COLUMNS, ingest.ITEM_COLUMNS, ingest.TEXT_COLUMNS)),
    files=[MARK],
)


@dataclass(frozen=True)
class Reader:
    """One reader: the file name it reads, a valid content, how to call it, and whether it warns or raises."""

    name: str
    filename: str
    valid: bytes
    read: Callable[[Path], object]
    warns: bool = False  # ingest: a bad file becomes a warning, the rest of the run still loads
    json: bool = True  # nesting applies
    text_fields: bool = False  # holds question/answer texts (the text bound applies)
    takes_text: bool = False  # reads text its caller decoded: encoding and file size are the caller's


def via_ingest(path: Path) -> list[ingest.IngestWarning]:
    return ingest.ingest([path.parent]).warnings


READERS = [
    Reader("qa-jsonl", "forget.jsonl", "\n".join(json.dumps(r) for r in QA).encode(), data.load_qa_dataset,
           text_fields=True),
    Reader("qa-json", "forget.json", json.dumps(QA).encode(), data.load_qa_dataset, text_fields=True),
    Reader("qa-csv", "forget.csv", qa_csv(), data.load_qa_dataset, text_fields=True),
    Reader("qa-parquet", "forget.parquet", qa_parquet(), data.load_qa_dataset, json=False, text_fields=True),
    Reader("refusal-lines", "idk.jsonl", f'"I do not know {MARK}."\n"No idea."\n'.encode(), data.load_lines,
           json=False),
    Reader("qa-dataset-json", "set.json", json.dumps({"name": "s", "split": "forget", "items": QA}).encode(),
           lambda path: data.QADataset.from_json(path.read_text(encoding="utf-8"), str(path)), text_fields=True,
           takes_text=True),
    Reader("tofu-eval", "TOFU_EVAL.json", json.dumps(EVAL).encode(), via_ingest, warns=True),
    Reader("tofu-summary", "TOFU_SUMMARY.json", json.dumps({"forget_Q_A_Prob": 0.5, f"{MARK}_Q_A_Prob": 0.5}).encode(),
           via_ingest, warns=True),
    Reader("legacy-log", "eval_log_forget.json", json.dumps(LEGACY).encode(), via_ingest, warns=True),
    Reader("legacy-aggregated", "eval_log_aggregated.json", json.dumps({"eval_log.json": LEGACY}).encode(),
           via_ingest, warns=True),
    Reader("legacy-csv", "aggregate_stat.csv", AGGREGATE, via_ingest, warns=True, json=False),
    Reader("read-records", "records.json", json.dumps([{"a": MARK}]).encode(), ingest.read_records),
    Reader("read-jsonl", "records.jsonl", json.dumps({"a": MARK}).encode() + b"\n{}\n", ingest.read_jsonl_or_lines),
    Reader("ingest-result", "ingest.json", INGESTED.to_json().encode(), ingest.IngestResult.load),
    Reader("robustness-result", "robustness.json",
           json.dumps({"outcomes": [], "pair": {}, "n_items": 0, "base": 0.5, "unlearned": 0.1, "epsilon": 0.001,
                       "settings": {}, "note": MARK}).encode(),
           lambda path: RobustnessResult.from_json(path.read_text(encoding="utf-8")), takes_text=True),
]  # fmt: skip
BY_NAME = {reader.name: reader for reader in READERS}
FILE_BOUND = re.escape(f"more than the {limits.MAX_QA_FILE_BYTES // limits.MiB} MiB allowed")
RESULT_BOUND = re.escape(f"more than the {limits.MAX_RESULT_FILE_BYTES // limits.MiB} MiB allowed")


def truncated(reader: Reader) -> bytes:
    if reader.filename.endswith(".parquet"):
        return reader.valid[: len(reader.valid) // 2]
    cut = reader.valid.index(MARK.encode()) + 3
    return reader.valid[:cut]


def non_utf8(reader: Reader) -> bytes:
    return reader.valid.replace(MARK.encode(), "Zanzíbar".encode("latin-1"))


def nested(reader: Reader) -> bytes:
    if reader.filename.endswith(".csv"):  # the one JSON cell of a QA CSV
        return b'index,question,answer,perturbed_answer\n0,q,a,"' + b"[" * 100_000 + b'"\n'
    return b"[" * 100_000


BAD = {"truncated": truncated, "non-utf8": non_utf8, "nested": nested}
EXPECTED = {  # what the message must say, by bad input (any reader)
    # a CSV cut inside a quoted cell ends with a short row
    "truncated": r"not valid JSON|invalid JSON|not a readable parquet|\d cells, but the header has \d",
    "non-utf8": r"not UTF-8|not a readable parquet",
    "nested": r"nested too deeply",
}


def cases() -> list[tuple[str, str]]:
    out = []
    for reader in READERS:
        for bad in BAD:
            if (bad == "nested" and not reader.json) or (bad == "non-utf8" and reader.takes_text):
                continue
            if bad == "truncated" and reader.name == "refusal-lines":
                continue  # a line file cut short is still a line file
            out.append((reader.name, bad))
    return out


def write(tmp_path: Path, reader: Reader, content: bytes) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    path = folder / reader.filename
    path.write_bytes(content)
    return path


def problem(reader: Reader, path: Path) -> str:
    """The one message the reader gives for `path`: the UserError's, or the warning naming the file."""
    began = time.perf_counter()
    if reader.warns:
        warnings = reader.read(path)
        assert len(warnings) == 1, warnings
        assert warnings[0].path == str(path)
        message = str(warnings[0])
    else:
        with pytest.raises(UserError) as caught:
            reader.read(path)
        message = str(caught.value)
    assert time.perf_counter() - began < SECONDS
    assert "Traceback" not in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_reader_reads_its_valid_file(tmp_path: Path, name: str) -> None:
    reader = BY_NAME[name]
    outcome = reader.read(write(tmp_path, reader, reader.valid))
    if reader.warns:
        assert outcome == []
    else:
        assert outcome is not None


@pytest.mark.parametrize(("name", "bad"), cases())
def test_a_bad_file_is_a_clear_message(tmp_path: Path, name: str, bad: str) -> None:
    reader = BY_NAME[name]
    path = write(tmp_path, reader, BAD[bad](reader))
    message = problem(reader, path)
    assert re.search(EXPECTED[bad], message), message
    if not name.endswith("-result") and name != "qa-dataset-json":  # those name the file through their caller
        assert path.name in message


@pytest.mark.parametrize("name", [reader.name for reader in READERS if not reader.takes_text])
def test_one_line_bigger_than_the_file_bound_is_refused_unread(tmp_path: Path, name: str) -> None:
    reader = BY_NAME[name]
    path = write(tmp_path, reader, b"")
    bound = limits.MAX_QA_FILE_BYTES if name.startswith(("qa-", "refusal")) else limits.MAX_RESULT_FILE_BYTES
    with path.open("wb") as handle:  # sparse: one line of bound + 1 bytes without writing them
        handle.truncate(bound + 1)
    message = problem(reader, path)
    assert re.search(FILE_BOUND if bound == limits.MAX_QA_FILE_BYTES else RESULT_BOUND, message), message


@pytest.mark.parametrize("name", [reader.name for reader in READERS if reader.text_fields])
def test_a_text_longer_than_the_text_bound_is_refused_with_its_place(tmp_path: Path, name: str) -> None:
    reader = BY_NAME[name]
    long = "x" * (limits.MAX_TEXT_CHARS + 1)
    content = reader.valid.replace(MARK.encode(), long.encode())
    if name == "qa-parquet":
        content = io.BytesIO()
        pd.DataFrame([{**QA[0], "question": long}]).to_parquet(content)
        content = content.getvalue()
    message = problem(reader, write(tmp_path, reader, content))
    question = long if name == "qa-parquet" else QA[0]["question"].replace(MARK, long)
    assert f"{len(question):,} characters" in message
    assert f"more than the {limits.MAX_TEXT_CHARS:,} allowed" in message
    assert "question" in message


def test_a_csv_row_with_an_extra_cell_names_its_line(tmp_path: Path) -> None:
    """pandas took an extra first cell as the index and shifted every field (question → answer)."""
    path = tmp_path / "forget.csv"
    path.write_text("question,answer\nWho?,Bo,stray\n")
    with pytest.raises(UserError, match=r"forget\.csv, line 2 \(row 1\): 3 cells, but the header has 2 columns"):
        data.load_qa_dataset(path)
    path.write_text("question,answer\nWho?,Bo\nWhere?,Here,stray\n")
    with pytest.raises(UserError, match=r"line 3 \(row 2\): 3 cells"):
        data.load_qa_dataset(path)


def test_a_quoted_cell_with_commas_and_a_line_break_is_one_cell(tmp_path: Path) -> None:
    path = tmp_path / "forget.csv"
    path.write_text('question,answer\n"Who, really?","Bo,\nand Jo"\n')
    [item] = data.load_qa_dataset(path).items
    assert (item.question, item.answer) == ("Who, really?", "Bo,\nand Jo")


def test_a_legacy_csv_row_with_an_extra_cell_is_a_warning_and_the_run_still_loads(tmp_path: Path) -> None:
    """csv.DictReader put the extra cell in a list under None and float(list) raised a TypeError."""
    (tmp_path / "aggregate_stat.csv").write_text("Method,Model Utility\nGA,0.5,stray\n")
    (tmp_path / "TOFU_SUMMARY.json").write_text(json.dumps({"forget_Q_A_Prob": 0.25}))
    result = ingest.ingest([tmp_path])
    assert [(w.line, w.message) for w in result.warnings] == [(2, "invalid CSV: 3 cells, but the header has 2")]
    assert result.summary["metric"].tolist() == ["forget_Q_A_Prob"]


def test_an_oversized_upload_is_refused_before_it_is_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import item_scores

    monkeypatch.setenv("ULENS_UPLOADS", str(tmp_path / "uploads"))
    content = b" " * (limits.MAX_QA_FILE_BYTES + 1)
    with pytest.raises(UserError, match=FILE_BOUND):
        item_scores.load_uploaded_dataset("forget.jsonl", content)
    assert not (tmp_path / "uploads").exists()


def test_results_with_a_single_usable_metric_are_a_message_not_a_key_error() -> None:
    """default_axes offers (m, m) when one metric is usable; the tradeoff figure failed with KeyError 'x'."""
    from core.figures import tradeoff_figure
    from core.results import default_axes, metric_options

    row = {"model": "run", "method": "NPO", "step": None, "split": "forget", "source": "s"}
    summary = pd.DataFrame([{**row, "metric": "forget_Q_A_Prob", "value": 0.3}], columns=ingest.SUMMARY_COLUMNS)
    x, y = default_axes(metric_options(summary))
    with pytest.raises(UserError, match=r"both axes show forget_Q_A_Prob: .*only one such metric"):
        tradeoff_figure(summary, x, y)
    two = pd.concat([summary, pd.DataFrame([{**row, "metric": "model_utility", "value": 0.6}])], ignore_index=True)
    with pytest.raises(UserError, match="pick a different metric for one axis"):
        tradeoff_figure(two, "model_utility", "model_utility")
    assert len(tradeoff_figure(two, "forget_Q_A_Prob", "model_utility").data[0].x) == 1
