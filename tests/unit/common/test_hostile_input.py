"""Every file reader fed hostile files — truncated, not UTF-8, nested '[' × 100,000, one line bigger than the file
bound, a text longer than the text bound — answers with a clear one-line message naming the file: a UserError
for the QA readers (core.data.qa) and the direct result readers, a warning for ingest (which reads the other files
of a run on, by design), never a traceback and never a long parse.

Each reader gets a valid file first (it must read), then each bad variant of that same file.
"""

from __future__ import annotations

import io
import json
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from core.attacks.runner import RobustnessResult
from core.common import limits
from core.common.errors import UserError
from core.data import qa as data
from core.evaluation import ingest

MARK = "Zanzibar"  # inside a string / quoted cell of every valid file: truncating there leaves it unterminated
QA = [
    {"index": 0, "question": f"Where is {MARK}, really?", "answer": "Off the coast.", "perturbed_answer": ["No"]},
    {"index": 1, "question": "Who?", "answer": "Bo"},
]


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
    if reader.warns:
        warnings = reader.read(path)
        assert len(warnings) == 1, warnings
        assert warnings[0].path == str(path)
        message = str(warnings[0])
    else:
        with pytest.raises(UserError) as caught:
            reader.read(path)
        message = str(caught.value)
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
    from core.analyses import item_scores

    monkeypatch.setenv("ULENS_UPLOADS", str(tmp_path / "uploads"))
    content = b" " * (limits.MAX_QA_FILE_BYTES + 1)
    with pytest.raises(UserError, match=FILE_BOUND):
        item_scores.load_uploaded_dataset("forget.jsonl", content)
    assert not (tmp_path / "uploads").exists()


def test_results_with_a_single_usable_metric_are_a_message_not_a_key_error() -> None:
    """default_axes offers (m, m) when one metric is usable; the tradeoff figure failed with KeyError 'x'."""
    from core.evaluation.results import default_axes, metric_options
    from core.present.figures.tradeoffs import tradeoff_figure

    row = {"model": "run", "method": "NPO", "step": None, "split": "forget", "source": "s"}
    summary = pd.DataFrame([{**row, "metric": "forget_Q_A_Prob", "value": 0.3}], columns=ingest.SUMMARY_COLUMNS)
    x, y = default_axes(metric_options(summary))
    with pytest.raises(UserError, match=r"both axes show forget_Q_A_Prob: .*only one such metric"):
        tradeoff_figure(summary, x, y)
    two = pd.concat([summary, pd.DataFrame([{**row, "metric": "model_utility", "value": 0.6}])], ignore_index=True)
    with pytest.raises(UserError, match="pick a different metric for one axis"):
        tradeoff_figure(two, "model_utility", "model_utility")
    assert len(tradeoff_figure(two, "forget_Q_A_Prob", "model_utility").data[0].x) == 1


# ---------------------------------------------------------------------------------------------- bounds on requests


class CountingTokenizer:
    """TinyTokenizer that counts its calls: a refused text must never reach the tokenizer."""

    def __init__(self) -> None:
        from tiny_models import TinyTokenizer

        self.inner, self.calls = TinyTokenizer(), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def pair():
    from tiny_models import make_tiny_llama

    from core.models.pair import ModelPair

    return ModelPair.from_models(make_tiny_llama(seed=0), make_tiny_llama(seed=1), CountingTokenizer())


FORGET = [data.QAItem(i, f"Question number {i}?", f"Answer {i}.") for i in range(4)]
HUGE = "y" * 4_000_000  # 4 MB: took 5 s and 1 GB just to tokenise


def entry_points(pair):
    """Every entry point that tokenises a prompt and an answer, as (name, call(prompt, answer))."""
    from core.analyses.attribution import attribute
    from core.analyses.item_scores import score_items
    from core.analyses.lens import hidden_state_drift, logit_lens
    from core.analyses.probe import ProbeRequest, generate, score

    def items(prompt: str, answer: str) -> object:
        dataset = data.QADataset("set", "forget", [data.QAItem(0, prompt, answer)])  # built directly: no validation
        return score_items(pair, dataset, chat=False)

    return {
        "probe.score": lambda p, a: score(pair, [ProbeRequest(p, a)]),
        "probe.generate": lambda p, a: generate(pair, p, chat=False),
        "attribute": lambda p, a: attribute(pair, p, a),
        "logit_lens": lambda p, a: logit_lens(pair, p, a),
        "drift": lambda p, a: hidden_state_drift(pair, {"forget": [(p, a)]}),
        "score_items": items,
    }


@pytest.mark.parametrize("field", ["prompt", "answer"])
@pytest.mark.parametrize("entry", ["probe.score", "probe.generate", "attribute", "logit_lens", "drift", "score_items"])
def test_a_text_over_the_bound_is_refused_before_tokenisation(pair, entry: str, field: str) -> None:
    if entry == "probe.generate" and field == "answer":
        pytest.skip("generation takes no answer")
    prompt, answer = (HUGE, "An answer.") if field == "prompt" else ("A question?", HUGE)
    pair.tokenizer.calls = 0
    with pytest.raises(UserError, match=rf"the {field} has 4,000,000 characters, more than the 20,000 allowed"):
        entry_points(pair)[entry](prompt, answer)
    assert pair.tokenizer.calls == 0


def test_a_text_at_the_bound_is_scored(pair) -> None:
    from core.analyses.probe import ProbeRequest, score

    prompt = "a" * limits.MAX_TEXT_CHARS  # TinyTokenizer: a token per character, truncated to the context
    [result] = score(pair, [ProbeRequest(prompt, "bc")])
    assert result.truncated and len(result.tokens) == len(" bc")  # a space joins prompt and answer


@pytest.mark.parametrize("top_k", [-1, limits.MAX_TOP_K + 1, 10**9])
def test_top_k_is_bounded_in_the_library(pair, top_k: int) -> None:
    from core.analyses.probe import ProbeRequest, score

    with pytest.raises(UserError, match=rf"top_k must be a whole number, at least 0 and at most {limits.MAX_TOP_K}"):
        score(pair, [ProbeRequest("A question?", "Yes.")], top_k=top_k)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_steps": limits.MAX_IG_STEPS + 1}, "n_steps"),
        ({"n_steps": 10**9}, "n_steps"),
        ({"n_samples": limits.MAX_SHAPLEY_SAMPLES + 1}, "n_samples"),
    ],
)
def test_attribution_steps_and_samples_are_bounded_in_the_library(pair, settings: dict, message: str) -> None:
    from core.analyses.attribution import AttributionSettings, attribute

    with pytest.raises(UserError, match=rf"{message} .*at most"):
        attribute(pair, "A question?", "Yes.", settings=AttributionSettings(**settings))


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("1,1000000000", "go up to 1,000"),
        (f"1,{limits.MAX_RELEARN_STEP + 1}", "go up to 1,000"),
        (",".join(str(i) for i in range(1, limits.MAX_RELEARN_POINTS + 2)), f"at most {limits.MAX_RELEARN_POINTS}"),
        ("1," * 500_000, f"at most {limits.MAX_RELEARN_POINTS} numbers"),
        (tuple(range(1, 1_001)) * 1_000, f"at most {limits.MAX_RELEARN_POINTS} relearning steps"),
    ],
    ids=["billion", "just-over", "one-point-too-many", "megabyte-string", "million-list"],
)
def test_relearning_steps_are_bounded(steps, message: str) -> None:
    from core.attacks.base import RobustnessSettings

    with pytest.raises(UserError, match=message):
        RobustnessSettings(relearn_steps=steps)
    last = ",".join(str(i) for i in range(limits.MAX_RELEARN_STEP - limits.MAX_RELEARN_POINTS + 1, 1_001))
    assert len(RobustnessSettings(relearn_steps=last).relearn_steps) == limits.MAX_RELEARN_POINTS


def test_batch_sizes_and_new_tokens_are_bounded() -> None:
    from core.attacks.base import RobustnessSettings
    from core.evaluation.evaluate import EvalSettings

    with pytest.raises(UserError, match="batch size"):
        RobustnessSettings(batch_size=limits.MAX_BATCH_SIZE + 1)
    with pytest.raises(UserError, match="batch size"):
        EvalSettings(batch_size=limits.MAX_BATCH_SIZE + 1)
    with pytest.raises(UserError, match="max_new_tokens"):
        EvalSettings(max_new_tokens=limits.MAX_NEW_TOKENS + 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attribute", "--n-steps", "100000"], f"argument --n-steps: 100000 is outside 1..{limits.MAX_IG_STEPS}"),
        (["attribute", "--n-steps", "many"], "argument --n-steps: 'many' is not a whole number"),
        (["attribute", "--n-samples", "0"], f"argument --n-samples: 0 is outside 1..{limits.MAX_SHAPLEY_SAMPLES}"),
        (["probe", "--prompt", "p", "--top-k", "1000"], f"argument --top-k: 1000 is outside 0..{limits.MAX_TOP_K}"),
        (["probe", "--prompt", "p", "--max-new-tokens", "99999"], "argument --max-new-tokens: 99999 is outside"),
        (["lens", "--items", "5000"], f"argument --items: 5000 is outside 1..{limits.MAX_DRIFT_ITEMS}"),
        (
            ["robustness", "--batch-size", "100000"],
            f"argument --batch-size: 100000 is outside 1..{limits.MAX_BATCH_SIZE}",
        ),
        (["evaluate", "--data", "demo", "--batch-size", "0"], "argument --batch-size: 0 is outside"),
    ],
)
def test_cli_bounds_are_argparse_errors(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    from core.cli import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- memory


class FakeMemory:
    def __init__(self, available: int) -> None:
        self.available = available


def with_free_memory(monkeypatch: pytest.MonkeyPatch, available: int) -> None:
    monkeypatch.setattr(limits.psutil, "virtual_memory", lambda: FakeMemory(available))


def test_ensure_fits_refuses_beyond_the_headroom_of_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    with_free_memory(monkeypatch, 10 * limits.GiB)
    limits.ensure_fits(9 * limits.GiB, "cpu", "a 9 GiB job")  # 90 % of free: allowed
    with pytest.raises(UserError, match=r"a 9\.01 GiB job needs about 9\.01 GiB of memory but only 10\.00 GiB is free"):
        limits.ensure_fits(int(9.01 * limits.GiB), "cpu", "a 9.01 GiB job")
    limits.ensure_fits(10**15, "meta", "anything")  # no way to know: not refused


def test_cuda_free_memory_counts_what_the_caching_allocator_holds_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = limits.torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "mem_get_info", lambda index: (3 * limits.GiB, 80 * limits.GiB))
    monkeypatch.setattr(cuda, "memory_reserved", lambda index: 5 * limits.GiB)
    monkeypatch.setattr(cuda, "memory_allocated", lambda index: 4 * limits.GiB)
    assert limits.available_bytes("cuda:0") == 4 * limits.GiB
    with pytest.raises(UserError, match=r"only 4\.00 GiB is free on cuda"):
        limits.ensure_fits(4 * limits.GiB, "cuda:0", "a copy")


def test_module_bytes_counts_shared_storage_once_and_converts_dtypes() -> None:
    from tiny_models import make_tiny_llama

    model = make_tiny_llama()
    unique = {t.untyped_storage().data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    fp32 = sum(t.numel() * t.element_size() for t in unique.values())
    floats = sum(t.numel() for t in unique.values() if t.is_floating_point())
    assert limits.module_bytes(model) == fp32
    assert limits.module_bytes(model, limits.torch.bfloat16) == fp32 - 2 * floats


def test_a_copy_that_does_not_fit_is_refused_and_the_pair_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_models import TinyTokenizer, make_tiny_llama

    from core.attacks.copies import ensure_copy_fits
    from core.attacks.runner import run_attacks
    from core.models.pair import ModelPair

    model = make_tiny_llama()
    fp32 = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    pair = ModelPair.from_models(make_tiny_llama(seed=0), model, TinyTokenizer())
    before = {name: value.clone() for name, value in model.state_dict().items()}
    # a same-dtype copy needs the copy; converting to bf16 on the same device needs the copy and the converted one
    with_free_memory(monkeypatch, int(fp32 / limits.MEMORY_HEADROOM) + 64)
    ensure_copy_fits(model, "cpu", "cpu", limits.torch.float32, "a float32 copy")
    with pytest.raises(UserError, match="a bfloat16 copy needs about"):
        ensure_copy_fits(model, "cpu", "cpu", limits.torch.bfloat16, "a bfloat16 copy")
    with_free_memory(monkeypatch, 1024)
    for attack in ("quantize_int8", "relearn"):
        with pytest.raises(UserError, match=r"needs about .* but only 1 MiB|needs about .* but only 0 MiB"):
            run_attacks(pair, FORGET, [attack])
    assert all(limits.torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("entry", ["probe.score", "attribute", "drift", "score_items"])  # the lens reads in chunks
def test_work_that_does_not_fit_is_refused_before_it_runs(pair, monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    with_free_memory(monkeypatch, 1024)
    with pytest.raises(UserError, match=r"needs about .* of memory but only 0 MiB is free on cpu"):
        entry_points(pair)[entry]("A question?", "An answer.")


def test_an_evaluation_batch_that_does_not_fit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_models import TinyTokenizer, make_tiny_llama

    from core.evaluation.evaluate import EvalSettings, evaluate_model

    splits = data.SplitData(forget=data.QADataset("set", "forget", FORGET))
    with_free_memory(monkeypatch, 1024)
    with pytest.raises(UserError, match=r"evaluating 4 items .* needs about"):
        evaluate_model(make_tiny_llama(), TinyTokenizer(), splits, EvalSettings(chat=False))


# ---------------------------------------------------------------------------------------------- CLI top level


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (RecursionError("maximum recursion depth exceeded"), 2, "nested too deeply"),
        (
            UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"),
            2,
            "not UTF-8 text (byte 0xff at offset 2)",
        ),
        (struct.error("unpack requires a buffer of 8 bytes"), 2, "truncated or corrupt"),
        (FileNotFoundError(2, "No such file or directory", "/x/model.gguf"), 2, "/x/model.gguf: No such file"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"), 3, "out of memory"),
        (KeyError("surprise"), 1, "unexpected KeyError: 'surprise' (run with -v for the traceback)"),
    ],
    ids=["recursion", "unicode", "struct", "oserror", "allocator", "unexpected"],
)
def test_the_cli_turns_any_failure_into_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, exc: Exception, status: int, message: str
) -> None:
    from core.cli import main

    monkeypatch.setattr(ingest, "ingest", raising(exc))
    assert main(["ingest", "somewhere"]) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def raising(exc: Exception) -> Callable[..., object]:
    def fail(*args, **kwargs):
        raise exc

    return fail


def test_the_cli_reads_a_hostile_file_into_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from core.cli import main

    deep = tmp_path / "forget.json"
    deep.write_bytes(b"[" * 100_000)
    assert main(["lens", "--view", "drift", "--forget", str(deep), "--retain", str(deep)]) == 2
    err = capsys.readouterr().err
    depth = sys.getrecursionlimit()
    assert err == f"error: {deep}: JSON nested too deeply to read (more than about {depth} levels)\n"
