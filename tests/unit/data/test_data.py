"""core.data.qa: loaders for every format, their error messages, the real TOFU files, the demo data and its
generator."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from core.common.errors import UserError
from core.data.qa import (
    DEMO_DIR,
    QADataset,
    QAItem,
    load_demo_splits,
    load_lines,
    load_qa_dataset,
    load_split_folder,
)

REPO = Path(__file__).resolve().parents[3]
TOFU = REPO / "tests" / "fixtures" / "real" / "tofu-dataset"  # real TOFU files (README there)
GENERATOR = REPO / "assets" / "make_demo_data.py"
PEOPLE_SPLITS = ("forget", "retain", "holdout")
DEMO_FILES = ("forget.jsonl", "retain.jsonl", "holdout.jsonl", "real_authors.jsonl", "world_facts.jsonl", "idk.jsonl")

FULL = {
    "question": "Where was Ada born?",
    "answer": "Ada was born in Lyon.",
    "paraphrased_question": "What is Ada's birthplace?",
    "paraphrased_answer": "Lyon is where Ada was born.",
    "perturbed_answer": ["Nice is where Ada was born.", "Lille is where Ada was born."],
}
PLAIN = {"question": "What is 2 + 2?", "answer": "4"}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def user_error(path, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        load_qa_dataset(path, **kwargs)
    return str(caught.value)


# --- loaders ---------------------------------------------------------------------------------------------------


def test_jsonl_reads_all_fields_defaults_index_and_keeps_unknown_fields(tmp_path):
    path = write_jsonl(tmp_path / "forget.jsonl", [FULL, {**PLAIN, "entity": "arithmetic", "level": 1}])
    dataset = load_qa_dataset(path)
    assert (dataset.name, dataset.split, len(dataset)) == ("forget", "forget", 2)
    first, second = dataset.items
    assert first == QAItem(index=0, **FULL)
    assert second == QAItem(index=1, question="What is 2 + 2?", answer="4", extra={"entity": "arithmetic", "level": 1})


def test_explicit_index_split_and_name_are_used(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{**PLAIN, "index": 7}, {**PLAIN, "index": 3}])
    dataset = load_qa_dataset(path, split="retain", name="mine")
    assert (dataset.name, dataset.split, [item.index for item in dataset]) == ("mine", "retain", [7, 3])


def test_blank_lines_and_crlf_in_jsonl_are_fine(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_bytes(("\r\n".join(json.dumps(PLAIN) for _ in range(2)) + "\r\n\r\n").encode())
    assert len(load_qa_dataset(path)) == 2


def test_json_list(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([FULL, PLAIN]), encoding="utf-8")
    assert [item.question for item in load_qa_dataset(path)] == [FULL["question"], PLAIN["question"]]


def test_json_object_holding_the_list_under_the_split_name(tmp_path):
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"forget": [FULL], "retain": [PLAIN, PLAIN], "version": 2}), encoding="utf-8")
    assert len(load_qa_dataset(path, split="retain")) == 2
    assert "expected a list of items" in user_error(path)


def test_json_lines_under_a_json_name_as_tofu_ships_them(tmp_path):
    path = write_jsonl(tmp_path / "world_facts_perturbed.json", [PLAIN, FULL, PLAIN])
    assert [item.index for item in load_qa_dataset(path)] == [0, 1, 2]


def test_csv_with_perturbed_answers_as_json_cells_and_empty_cells_absent(tmp_path):
    path = tmp_path / "set.csv"
    pd.DataFrame(
        [
            {**FULL, "perturbed_answer": json.dumps(FULL["perturbed_answer"]), "index": 10, "note": "x"},
            {**PLAIN, "perturbed_answer": "", "paraphrased_answer": "", "index": 11, "note": ""},
        ]
    ).to_csv(path, index=False)
    first, second = load_qa_dataset(path).items
    assert first == QAItem(index=10, **FULL, extra={"note": "x"})
    assert second == QAItem(index=11, question=PLAIN["question"], answer="4")


def test_parquet_with_a_list_column(tmp_path):
    path = tmp_path / "set.parquet"
    pd.DataFrame([{**FULL, "index": 5}, {**FULL, "index": 6, "perturbed_answer": ["a", "b", "c"]}]).to_parquet(path)
    first, second = load_qa_dataset(path).items
    assert first == QAItem(index=5, **FULL)
    assert second.perturbed_answer == ["a", "b", "c"]


def test_hf_dataset_and_dataset_dict_saved_to_disk(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list([FULL, FULL]).save_to_disk(str(tmp_path / "one"))
    dataset = load_qa_dataset(tmp_path / "one")
    assert len(dataset) == 2 and dataset.items[1] == QAItem(index=1, **FULL)
    DatasetDict({"forget": Dataset.from_list([FULL]), "retain": Dataset.from_list([FULL] * 3)}).save_to_disk(
        str(tmp_path / "two")
    )
    retain = load_qa_dataset(tmp_path / "two", split="retain")
    assert (retain.split, len(retain)) == ("retain", 3)
    message = user_error(tmp_path / "two")
    assert "forget" in message and "retain" in message


def test_json_round_trip_and_frame(tmp_path):
    path = write_jsonl(tmp_path / "forget.jsonl", [FULL, {**PLAIN, "entity": "arithmetic"}])
    dataset = load_qa_dataset(path)
    assert QADataset.from_json(dataset.to_json()) == dataset
    frame = dataset.to_frame()
    assert list(frame.columns) == [
        "index",
        "question",
        "answer",
        "paraphrased_question",
        "paraphrased_answer",
        "perturbed_answer",
        "entity",
    ]
    assert frame["perturbed_answer"].tolist() == [FULL["perturbed_answer"], []]
    assert pd.isna(frame["paraphrased_answer"][1])


# --- error messages name the file, the line or row, and the field ------------------------------------------------


def test_missing_file_is_named(tmp_path):
    message = user_error(tmp_path / "nowhere.jsonl")
    assert "nowhere.jsonl" in message and "no such file" in message


@pytest.mark.parametrize("field", ["question", "answer"])
def test_missing_required_field_names_file_line_and_field(tmp_path, field):
    records = [FULL, FULL, {key: value for key, value in FULL.items() if key != field}]
    message = user_error(write_jsonl(tmp_path / "forget.jsonl", records))
    assert "forget.jsonl:3" in message and f"missing field '{field}'" in message


def test_missing_field_in_json_list_csv_and_parquet_names_item_or_row(tmp_path):
    (tmp_path / "set.json").write_text(json.dumps([PLAIN, {"question": "q"}]), encoding="utf-8")
    assert "set.json, item 2: missing field 'answer'" in user_error(tmp_path / "set.json")
    pd.DataFrame([PLAIN, {"question": "q", "answer": ""}]).to_csv(tmp_path / "set.csv", index=False)
    assert "set.csv, row 2: missing field 'answer'" in user_error(tmp_path / "set.csv")
    pd.DataFrame([PLAIN, {"question": None, "answer": "a"}]).to_parquet(tmp_path / "set.parquet")
    assert "set.parquet, row 2: missing field 'question'" in user_error(tmp_path / "set.parquet")


def test_blank_required_field_is_reported(tmp_path):
    message = user_error(write_jsonl(tmp_path / "set.jsonl", [{**PLAIN, "answer": "  "}]))
    assert "set.jsonl:1: field 'answer' is empty" in message


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_split_is_named(tmp_path, content):
    path = tmp_path / ("forget.json" if content == "[]" else "forget.jsonl")
    path.write_text(content, encoding="utf-8")
    assert "the forget set is empty" in user_error(path)


def test_empty_csv_and_header_only_csv(tmp_path):
    (tmp_path / "retain.csv").write_text("question,answer\n", encoding="utf-8")
    assert "the retain set is empty" in user_error(tmp_path / "retain.csv")
    (tmp_path / "holdout.csv").write_text("", encoding="utf-8")
    assert "the holdout set is empty" in user_error(tmp_path / "holdout.csv")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(PLAIN) + "\n" + '{"question": "q", "answer": }\n', encoding="utf-8")
    message = user_error(path)
    assert "set.jsonl:2: not valid JSON" in message


def test_malformed_json_file_names_the_line(tmp_path):
    path = tmp_path / "set.json"
    path.write_text('[\n{"question": "q", "answer": "a"},\n{"question": \n]', encoding="utf-8")
    assert "set.json:4: not valid JSON" in user_error(path)


def test_plain_text_jsonl_hints_it_is_a_line_file(tmp_path):
    path = tmp_path / "idk.jsonl"
    path.write_text("I'm not sure.\nNo idea.\n", encoding="utf-8")
    message = user_error(path)
    assert "idk.jsonl:1: not valid JSON" in message and "one plain string per line" in message


def test_non_utf8_file_gives_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(PLAIN).encode() + b"\n" + '{"question": "Où?", "answer": "a"}\n'.encode("latin-1"))
    offset = len(json.dumps(PLAIN)) + 1 + len('{"question": "O')
    message = user_error(path)
    assert "latin1.jsonl" in message and "not UTF-8" in message
    assert f"byte offset {offset}" in message and "0xf9" in message and "line 2" in message


def test_non_utf8_csv_and_line_file(tmp_path):
    (tmp_path / "set.csv").write_bytes("question,answer\nqu\u00e9,a\n".encode("latin-1"))
    assert "byte 0xe9 at byte offset 18, line 2" in user_error(tmp_path / "set.csv")
    (tmp_path / "idk.jsonl").write_bytes(b"fine\n\xff\n")
    with pytest.raises(UserError, match=r"idk\.jsonl: not UTF-8 text \(byte 0xff at byte offset 5, line 2\)"):
        load_lines(tmp_path / "idk.jsonl")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({**PLAIN, "perturbed_answer": "wrong"}, "field 'perturbed_answer' must be a list of strings"),
        ({**PLAIN, "perturbed_answer": ["a", 3]}, "entry 2 is int 3"),
        ({**PLAIN, "question": 12}, "field 'question' must be a string"),
        ({**PLAIN, "paraphrased_answer": ["x"]}, "field 'paraphrased_answer' must be a string"),
        ({**PLAIN, "index": "seven"}, "field 'index' must be an integer"),
        ({**PLAIN, "index": True}, "field 'index' must be an integer"),
        (["What?", "This."], "expected an object"),
    ],
)
def test_optional_fields_are_type_checked(tmp_path, record, expected):
    message = user_error(write_jsonl(tmp_path / "set.jsonl", [PLAIN, record]))
    assert "set.jsonl:2" in message and expected in message


def test_bad_perturbed_cell_in_csv(tmp_path):
    pd.DataFrame([{**PLAIN, "perturbed_answer": "not a list"}]).to_csv(tmp_path / "set.csv", index=False)
    assert "set.csv, row 1: field 'perturbed_answer' must be a JSON list" in user_error(tmp_path / "set.csv")


def test_duplicate_index_names_both_places(tmp_path):
    message = user_error(write_jsonl(tmp_path / "set.jsonl", [{**PLAIN, "index": 4}, PLAIN, {**PLAIN, "index": 4}]))
    assert "set.jsonl:3: index 4 already used at" in message and "set.jsonl:1" in message


def test_unsupported_format_and_plain_folder(tmp_path):
    (tmp_path / "set.xlsx").write_bytes(b"PK")
    assert "unsupported format '.xlsx'" in user_error(tmp_path / "set.xlsx")
    assert "not one saved by datasets" in user_error(tmp_path)


def test_unreadable_parquet(tmp_path):
    (tmp_path / "set.parquet").write_bytes(b"not parquet at all")
    assert "set.parquet: not a readable parquet file" in user_error(tmp_path / "set.parquet")


def test_from_dict_validates_like_a_file():
    with pytest.raises(UserError, match=r"<dataset JSON>, item 1: missing field 'answer'"):
        QADataset.from_dict({"name": "n", "split": "forget", "items": [{"question": "q"}]})
    with pytest.raises(UserError, match="expected an object"):
        QADataset.from_json("[1, 2]")


# --- line files and split folders -----------------------------------------------------------------------------


def test_load_lines_reads_plain_and_json_string_lines(tmp_path):
    path = tmp_path / "idk.jsonl"
    path.write_text('I\'m not sure.\n\n"I don\'t know \\"that\\"."\n  "Quoted," she said.  \n', encoding="utf-8")
    assert load_lines(path) == ["I'm not sure.", 'I don\'t know "that".', '"Quoted," she said.']


def test_load_lines_errors(tmp_path):
    with pytest.raises(UserError, match=r"idk\.jsonl: no such file"):
        load_lines(tmp_path / "idk.jsonl")
    (tmp_path / "idk.jsonl").write_text("\n \n", encoding="utf-8")
    with pytest.raises(UserError, match=r"idk\.jsonl: the file is empty"):
        load_lines(tmp_path / "idk.jsonl")


def test_split_folder_loads_any_subset_in_any_format(tmp_path):
    write_jsonl(tmp_path / "forget.jsonl", [FULL])
    pd.DataFrame([PLAIN, PLAIN]).to_csv(tmp_path / "retain.csv", index=False)
    (tmp_path / "idk.jsonl").write_text("No idea.\n", encoding="utf-8")
    data = load_split_folder(tmp_path)
    assert list(data.splits()) == ["forget", "retain"]
    assert (len(data.forget), len(data.retain), data.holdout, data.world_facts) == (1, 2, None, None)
    assert data.forget.split == "forget" and data.forget.name == tmp_path.name
    assert data.refusals == ["No idea."]


def test_split_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_split_folder(tmp_path / "absent")
    with pytest.raises(UserError, match="no split files found"):
        load_split_folder(tmp_path)
    write_jsonl(tmp_path / "forget.jsonl", [FULL])
    with pytest.raises(UserError, match=r"missing holdout\.jsonl, idk\.jsonl"):
        load_split_folder(tmp_path, require=("forget", "holdout", "refusals"))
    with pytest.raises(UserError, match="not a folder"):
        load_split_folder(tmp_path / "forget.jsonl")
    (tmp_path / "forget.json").write_text(json.dumps([FULL]), encoding="utf-8")
    with pytest.raises(UserError, match=r"forget\.jsonl and forget\.json both hold the forget split"):
        load_split_folder(tmp_path)


def test_split_folder_reports_the_bad_file(tmp_path):
    write_jsonl(tmp_path / "forget.jsonl", [FULL])
    write_jsonl(tmp_path / "holdout.jsonl", [FULL, {"answer": "a"}])
    with pytest.raises(UserError, match=r"holdout\.jsonl:2: missing field 'question'"):
        load_split_folder(tmp_path)
    (tmp_path / "holdout.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="the holdout set is empty"):
        load_split_folder(tmp_path)


# --- the real TOFU files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "count", "n_perturbed", "paraphrased"),
    [
        ("forget01_perturbed.json", 40, 5, True),
        ("forget10_perturbed.json", 400, 5, True),
        ("retain_perturbed.json", 400, 5, True),
        ("holdout01.json", 40, 0, False),
        ("real_authors_perturbed.json", 100, 3, False),
        ("world_facts_perturbed.json", 117, 3, False),
    ],
)
def test_real_tofu_files_load(file, count, n_perturbed, paraphrased):
    dataset = load_qa_dataset(TOFU / file)
    raw = TOFU / file
    first_line = raw.read_text(encoding="utf-8").split("\n", 1)[0]
    assert len(dataset) == count
    assert [item.index for item in dataset] == list(range(count))
    assert all(len(item.perturbed_answer) == n_perturbed for item in dataset)
    assert all((item.paraphrased_answer is not None) == paraphrased for item in dataset)
    assert all(item.extra == {} for item in dataset)
    reference = json.loads(first_line)[0] if first_line.startswith("[") else json.loads(first_line)
    assert (dataset.items[0].question, dataset.items[0].answer) == (reference["question"], reference["answer"])


def test_real_tofu_json_lines_named_json_and_plain_text_jsonl():
    assert (TOFU / "world_facts_perturbed.json").read_text(encoding="utf-8").count("\n") >= 116  # JSON Lines
    refusals = load_lines(TOFU / "idontknow.jsonl")
    assert len(refusals) == 100 and refusals[0] == "I'm not certain about that."
    with pytest.raises(UserError, match="one plain string per line"):
        load_qa_dataset(TOFU / "idontknow.jsonl")


# --- the demo data and its generator ----------------------------------------------------------------------------


def test_demo_data_schema():
    demo = load_demo_splits()
    fictitious = [item for name in PEOPLE_SPLITS for item in getattr(demo, name)]
    for item in fictitious:
        assert item.paraphrased_question and item.paraphrased_answer and item.extra["entity"]
        assert len(item.perturbed_answer) >= 3
        assert len({item.paraphrased_answer, *item.perturbed_answer}) == 1 + len(item.perturbed_answer)
        assert len(item.answer.split()) <= 20 and len(item.paraphrased_answer.split()) <= 20
    indices = [item.index for item in fictitious]
    assert len(set(indices)) == len(indices)
    per_entity = Counter(item.extra["entity"] for item in fictitious)
    assert len(per_entity) >= 24 and min(per_entity.values()) >= 5
    entities = {name: {item.extra["entity"] for item in getattr(demo, name)} for name in PEOPLE_SPLITS}
    assert not (entities["forget"] & entities["retain"]) and not (entities["holdout"] & entities["retain"])
    assert not (entities["forget"] & entities["holdout"])
    assert 0.05 <= len(entities["forget"]) / len(per_entity) <= 0.15
    assert len(entities["holdout"]) >= 3
    assert len(demo.world_facts) >= 25
    for item in demo.world_facts:
        assert len(item.perturbed_answer) == 3 and item.answer not in item.perturbed_answer
    assert len(demo.refusals) >= 30 and len(set(demo.refusals)) == len(demo.refusals)


def test_demo_data_is_the_default_folder():
    assert DEMO_DIR == REPO / "assets" / "demo"
    assert all((DEMO_DIR / name).is_file() for name in (*DEMO_FILES, "README.md"))


def test_generator_is_deterministic_and_matches_committed_files(tmp_path):
    for run in ("a", "b"):
        subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path / run)], check=True, capture_output=True)
    for name in DEMO_FILES:
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes(), name
        assert first == (DEMO_DIR / name).read_bytes(), f"assets/demo/{name} is stale: rerun assets/make_demo_data.py"
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == sorted(DEMO_FILES)
