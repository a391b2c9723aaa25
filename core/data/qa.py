"""Question–answer datasets in the TOFU layout: the schema, loaders for JSONL/JSON/CSV/parquet/`datasets` folders,
plain-text line files (refusals) and split folders (forget.jsonl, retain.jsonl, … as in assets/demo)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.common.errors import UserError
from core.common.limits import MAX_QA_FILE_BYTES, MAX_TEXT_CHARS, check_file_size, loads, nesting_error
from core.common.paths import ASSETS

log = logging.getLogger(__name__)

DEMO_DIR = ASSETS / "demo"
SPLIT_NAMES = ("forget", "retain", "holdout", "real_authors", "world_facts")
REFUSALS = "refusals"
REFUSAL_FILES = ("idk.jsonl", "idk.txt")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
KNOWN_FIELDS = ("index", "question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer")
_OPTIONAL_TEXT = ("paraphrased_question", "paraphrased_answer")
_HF_MARKERS = ("dataset_dict.json", "state.json")

Records = list[tuple[str, Any]]  # (where, record): `where` names file and line/row for error messages


@dataclass
class QAItem:
    """One question with its answer and, where the set has them, TOFU's paraphrases and wrong (perturbed) answers."""

    index: int
    question: str
    answer: str
    paraphrased_question: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answer: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The flat TOFU-style record: known fields (unset optional ones left out), then the extra fields."""
        record: dict[str, Any] = {"index": self.index, "question": self.question, "answer": self.answer}
        for name in _OPTIONAL_TEXT:
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        if self.perturbed_answer:
            record["perturbed_answer"] = list(self.perturbed_answer)
        record.update(self.extra)
        return record


@dataclass
class QADataset:
    """A named split of QA items (e.g. TOFU's forget10), as loaded from one file or folder."""

    name: str
    split: str
    items: list[QAItem]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[QAItem]:
        return iter(self.items)

    def to_frame(self) -> pd.DataFrame:
        """One row per item: the known fields first (missing where unset), then extra fields as columns."""
        rows = [{name: getattr(item, name) for name in KNOWN_FIELDS} for item in self.items]
        extra = pd.DataFrame([item.extra for item in self.items], index=range(len(self.items)))
        return pd.concat([pd.DataFrame(rows, columns=list(KNOWN_FIELDS)), extra], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "items": [item.to_record() for item in self.items]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dataset JSON>") -> QADataset:
        """Inverse of `to_dict`; records are validated as a loaded file's would be."""
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise UserError(f"{source}: expected an object with name, split and an items list")
        split = str(data.get("split", "dataset"))
        records = [(f"{source}, item {number}", record) for number, record in enumerate(data["items"], start=1)]
        return _build(records, name=str(data.get("name", split)), split=split, source=source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "<dataset JSON>") -> QADataset:
        try:
            data = loads(text, source)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        try:
            return cls.from_dict(data, source=source)
        except RecursionError:
            raise nesting_error(source) from None


@dataclass
class SplitData:
    """The named splits of a split folder (the demo's layout); a split the folder lacks is None."""

    forget: QADataset | None = None
    retain: QADataset | None = None
    holdout: QADataset | None = None
    real_authors: QADataset | None = None
    world_facts: QADataset | None = None
    refusals: list[str] = field(default_factory=list)
    muse: Any = None  # core.data.muse.MuseData: MUSE KnowMem / VerbMem files of the folder, when it has them

    def splits(self) -> dict[str, QADataset]:
        """The QA splits present, by name, in SPLIT_NAMES order."""
        return {name: dataset for name in SPLIT_NAMES if (dataset := getattr(self, name)) is not None}


def load_qa_dataset(path: str | Path, *, split: str | None = None, name: str | None = None) -> QADataset:
    """Load a QA set from a .jsonl/.json/.csv/.parquet file or a folder written by `datasets`' save_to_disk.

    `split` labels the set (default: the file name's stem) and picks the split of a saved DatasetDict.
    """
    path = _existing(path)
    try:
        return _load_qa(path, split, name)
    except RecursionError:  # nesting that json read but validation (a recursive walk) cannot
        raise nesting_error(str(path)) from None


def _load_qa(path: Path, split: str | None, name: str | None) -> QADataset:
    if path.is_dir():
        if not _is_hf_folder(path):
            raise UserError(
                f"{path}: a folder, but not one saved by datasets' save_to_disk (no {' or '.join(_HF_MARKERS)}); "
                "for a folder of forget.jsonl, retain.jsonl, … use it as a split folder"
            )
        split, records = _hf_records(path, split)
    else:
        split = split or path.stem
        records = _file_records(path, split)
    return _build(records, name=name or split, split=split, source=str(path))


def load_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a text file (TOFU's idontknow.jsonl is plain text); a line that is a JSON string
    literal ("…") is decoded, so both one-plain-line-each and one-JSON-string-each files read the same."""
    path = _existing(path)
    lines = []
    for raw in _read_text(path).split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line.startswith('"'):
            with contextlib.suppress(json.JSONDecodeError):  # else a plain line that starts with a quote mark
                line = json.loads(line).strip()
        lines.append(line)
    if not lines:
        raise UserError(f"{path}: the file is empty (expected one string per line)")
    return lines


def load_split_folder(folder: str | Path, *, require: tuple[str, ...] = ()) -> SplitData:
    """Load forget/retain/holdout/real_authors/world_facts (any supported format each) and idk.jsonl from one folder.

    Any subset may be present; `require` names the splits (and "refusals") that must be.
    """
    folder = _existing(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected a folder with forget.jsonl, retain.jsonl, …)")
    data = SplitData()
    for split in SPLIT_NAMES:
        source = _split_source(folder, split)
        if source is not None:
            setattr(data, split, load_qa_dataset(source, split=split, name=folder.name))
    from core.data.muse import load_muse_parts

    data.muse = load_muse_parts(folder) or None
    refusal_files = [folder / name for name in REFUSAL_FILES if (folder / name).is_file()]
    if refusal_files:
        data.refusals = load_lines(refusal_files[0])
    present = [*data.splits(), *([REFUSALS] if data.refusals else []), *(["muse"] if data.muse else [])]
    if not present:
        expected = ", ".join(f"{split}.jsonl" for split in SPLIT_NAMES)
        raise UserError(f"{folder}: no split files found (expected any of {expected}, {REFUSAL_FILES[0]})")
    missing = [name for name in require if name not in present]
    if missing:
        files = ", ".join(REFUSAL_FILES[0] if name == REFUSALS else f"{name}.jsonl" for name in missing)
        raise UserError(f"{folder}: missing {files}")
    log.info("loaded %s from %s", ", ".join(f"{name}={_size(data, name)}" for name in present), folder)
    return data


def load_demo_splits(folder: str | Path = DEMO_DIR) -> SplitData:
    """The demo's TOFU-style data (assets/demo): all four QA splits and the refusal strings."""
    return load_split_folder(folder, require=(*SPLIT_NAMES, REFUSALS))


def _size(data: SplitData, name: str) -> int:
    return len(data.refusals) if name == REFUSALS else len(getattr(data, name))


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return path


def _is_hf_folder(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _HF_MARKERS)


def _split_source(folder: Path, split: str) -> Path | None:
    """The one file (or saved `datasets` folder) holding `split`; two candidates are an error, not a guess."""
    candidates = [folder / f"{split}{suffix}" for suffix in FILE_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if (folder / split).is_dir() and _is_hf_folder(folder / split):
        candidates.append(folder / split)
    if len(candidates) > 1:
        raise UserError(f"{folder}: {' and '.join(c.name for c in candidates)} both hold the {split} split; keep one")
    return candidates[0] if candidates else None


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a leading BOM dropped); an error names the first offending byte. A file over
    MAX_QA_FILE_BYTES is refused unread."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {exc.start}, line {line}); "
            "re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _read_bytes(path: Path) -> bytes:
    try:
        check_file_size(path, MAX_QA_FILE_BYTES, "QA set file")
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def _file_records(path: Path, split: str) -> Records:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_records(path, _read_text(path))
    if suffix == ".json":
        return _json_records(path, _read_text(path), split)
    if suffix == ".csv":
        return _csv_records(path, _read_text(path))
    if suffix == ".parquet":
        return _parquet_records(path)
    raise UserError(f"{path}: unsupported format '{path.suffix}' (expected {', '.join(FILE_SUFFIXES)} or a folder)")


def _jsonl_records(path: Path, text: str) -> Records:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{path}:{number}", loads(line, f"{path}:{number}")))
        except json.JSONDecodeError as exc:
            hint = "" if records else "; a file of one plain string per line (like refusals) is not a QA set"
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno}){hint}") from None
    return records


def _json_records(path: Path, text: str, split: str) -> Records:
    """A JSON list, an object holding one list, or JSON Lines under a .json name (TOFU's world_facts_perturbed)."""
    if not text.strip():
        return []
    try:
        data = loads(text, str(path))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _jsonl_records(path, text)
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if isinstance(data, dict):
        if "question" in data:
            return [(f"{path}:1", data)]
        lists = [key for key, value in data.items() if isinstance(value, list)]
        key = split if split in lists else "data" if "data" in lists else lists[0] if len(lists) == 1 else None
        if key is None:
            raise UserError(f"{path}: expected a list of items or an object holding one list; found keys {list(data)}")
        data = data[key]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of items, found {type(data).__name__}")
    return [(f"{path}, item {number}", record) for number, record in enumerate(data, start=1)]


def _csv_records(path: Path, text: str) -> Records:
    """Rows of a CSV with a header; empty cells count as absent and perturbed_answer is a JSON list in its cell.
    A row with more or fewer cells than the header is an error naming its line (pandas would silently take an
    extra first cell as the row's index and shift every field)."""
    if not text.strip():
        return []
    header, rows = _csv_rows(path, text)
    records = []
    for number, (line, cells) in enumerate(rows, start=1):
        where = f"{path}, row {number}"
        if len(cells) != len(header):
            raise UserError(
                f"{path}, line {line} (row {number}): {len(cells)} cells, but the header has {len(header)} columns "
                f"({_names(header)}); quote cells that hold commas"
            )
        record = {key: value for key, value in zip(header, cells, strict=True) if value != ""}
        if isinstance(record.get("perturbed_answer"), str):
            try:
                record["perturbed_answer"] = loads(record["perturbed_answer"], where)
            except json.JSONDecodeError:
                raise UserError(
                    f'{where}: field \'perturbed_answer\' must be a JSON list of strings in its cell, e.g. ["a", "b"]'
                ) from None
        records.append((where, record))
    return records


def _csv_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (unnamed columns named as pandas names them) and the non-blank rows with their end lines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:  # csv's own cell bound (131,072 characters) stops a huge cell or an unclosed quote from being read whole
        rows = [(reader.line_num, cells) for cells in reader if cells]
    except csv.Error as exc:
        raise UserError(f"{path}, line {reader.line_num}: not a readable CSV file ({exc})") from None
    if not rows:
        return [], []
    header = [name or f"Unnamed: {column}" for column, name in enumerate(rows[0][1])]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise UserError(f"{path}, line {rows[0][0]}: the header names {', '.join(duplicates)} more than once")
    return header, rows[1:]


def _names(header: list[str], shown: int = 8) -> str:
    return ", ".join(header[:shown]) + (f", … ({len(header) - shown} more)" if len(header) > shown else "")


def _parquet_records(path: Path) -> Records:
    try:  # pyarrow's ArrowInvalid and a string column's UnicodeDecodeError are ValueErrors, ArrowIOError an OSError
        check_file_size(path, MAX_QA_FILE_BYTES, "QA set file")
        rows = pd.read_parquet(path).to_dict(orient="records")
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
    return [(f"{path}, row {number}", row) for number, row in enumerate(rows, start=1)]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _hf_records(path: Path, split: str | None) -> tuple[str, Records]:
    """Rows of a Dataset or of one split of a DatasetDict saved with save_to_disk; returns (split, records)."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable saved `datasets` folder ({exc})") from None
    if isinstance(loaded, DatasetDict):
        names = list(loaded)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in loaded:
            raise UserError(f"{path}: holds the splits {names}; name the one to load (asked for {split!r})")
        loaded = loaded[split]
    split = split or path.name
    return split, [(f"{path}, row {number}", row) for number, row in enumerate(loaded, start=1)]


def _build(records: Records, *, name: str, split: str, source: str) -> QADataset:
    if not records:
        raise UserError(f"{source}: the {split} set is empty")
    items = [_parse_item(record, position, where) for position, (where, record) in enumerate(records)]
    first_seen: dict[int, str] = {}
    for item, (where, _) in zip(items, records, strict=True):
        if item.index in first_seen:
            raise UserError(f"{where}: index {item.index} already used at {first_seen[item.index]}")
        first_seen[item.index] = where
    return QADataset(name=name, split=split, items=items)


def _parse_item(record: Any, position: int, where: str) -> QAItem:
    """Validate one record: question and answer required, optional fields type-checked, unknown fields kept."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with question and answer fields, found {type(record).__name__}")
    values = {str(key): value for key, value in _plain(record).items() if value is not None}
    required = {name: _text(values, name, where) for name in ("question", "answer")}
    for name, value in required.items():
        if value is None:
            raise UserError(f"{where}: missing field '{name}'")
        if not value.strip():
            raise UserError(f"{where}: field '{name}' is empty")
    return QAItem(
        index=_index(values.get("index", position), where),
        question=required["question"],
        answer=required["answer"],
        paraphrased_question=_text(values, "paraphrased_question", where),
        paraphrased_answer=_text(values, "paraphrased_answer", where),
        perturbed_answer=_string_list(values.get("perturbed_answer", []), where),
        extra={key: value for key, value in values.items() if key not in KNOWN_FIELDS},
    )


def _text(values: dict[str, Any], name: str, where: str) -> str | None:
    value = values.get(name)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field '{name}' must be a string, found {type(value).__name__} {_short(value)}")
    _check_length(value, f"field '{name}'", where)
    return value


def _check_length(value: str | None, what: str, where: str) -> None:
    """Every text is scored as a prompt or an answer: refuse one the scorers would refuse, here, with its place."""
    if value is not None and len(value) > MAX_TEXT_CHARS:
        raise UserError(f"{where}: {what} has {len(value):,} characters, more than the {MAX_TEXT_CHARS:,} allowed")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _index(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: field 'index' must be an integer, found {_short(value)}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list | tuple):
        raise UserError(f"{where}: field 'perturbed_answer' must be a list of strings, found {type(value).__name__}")
    for position, entry in enumerate(value, start=1):
        if not isinstance(entry, str):
            raise UserError(
                f"{where}: field 'perturbed_answer' must be a list of strings; entry {position} is "
                f"{type(entry).__name__} {_short(entry)}"
            )
        _check_length(entry, f"perturbed_answer entry {position}", where)
    return list(value)


def _plain(value: Any) -> Any:
    """numpy/pandas values (parquet, datasets) as plain Python; NaN and NA become None (an absent field)."""
    if isinstance(value, dict):
        return {key: _plain(entry) for key, entry in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(entry) for entry in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value
