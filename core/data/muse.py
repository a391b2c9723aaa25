"""MUSE's memorisation sets in a split folder (optional): `forget_knowmem.jsonl` / `retain_knowmem.jsonl` (QA:
question, answer), their in-context examples `forget_knowmem_icl.jsonl` / `retain_knowmem_icl.jsonl` (MUSE's
`forget_qa_icl` / `retain_qa_icl`, put before each KnowMem question as open-unlearning does) and
`forget_verbmem.jsonl` (one object a line: `prompt`, the text's opening, and `gt`, its true continuation), as MUSE's
knowmem and verbmem subsets name their fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.common.errors import UserError
from core.common.limits import MAX_QA_FILE_BYTES, check_file_size

KNOWMEM_SPLITS = ("forget", "retain")
VERBMEM_FILE = "forget_verbmem.jsonl"


@dataclass
class MuseData:
    """KnowMem QA sets by split (forget, retain), their in-context examples by split, and VerbMem (prompt, true
    continuation) pairs."""

    knowmem: dict[str, Any] = field(default_factory=dict)
    knowmem_icl: dict[str, Any] = field(default_factory=dict)
    verbmem: list[tuple[str, str]] = field(default_factory=list)

    def records(self) -> dict[str, Any]:
        """What identifies the data (the evaluation cache's dataset hash)."""
        knowmem = {split: [item.to_record() for item in qa] for split, qa in self.knowmem.items()}
        icl = {split: [item.to_record() for item in qa] for split, qa in self.knowmem_icl.items()}
        return {"knowmem": knowmem, "verbmem": self.verbmem} | ({"knowmem_icl": icl} if icl else {})

    def __len__(self) -> int:
        return sum(len(qa) for qa in self.knowmem.values()) + len(self.verbmem)


def load_verbmem(path: Path) -> list[tuple[str, str]]:
    check_file_size(path, MAX_QA_FILE_BYTES, "MUSE VerbMem file")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("prompt", "gt")):
            raise UserError(f"{path}:{number}: expected an object with text fields 'prompt' and 'gt'")
        pairs.append((record["prompt"], record["gt"]))
    return pairs


def load_muse_parts(folder: Path) -> MuseData:
    """The MUSE files present in a split folder (none: an empty MuseData)."""
    from core.data.qa import load_qa_dataset

    data = MuseData()
    for split in KNOWMEM_SPLITS:
        path = folder / f"{split}_knowmem.jsonl"
        if path.is_file():
            data.knowmem[split] = load_qa_dataset(path, split=f"{split}_knowmem")
            icl = folder / f"{split}_knowmem_icl.jsonl"
            if icl.is_file():
                data.knowmem_icl[split] = load_qa_dataset(icl, split=f"{split}_knowmem_icl")
    if (folder / VERBMEM_FILE).is_file():
        data.verbmem = load_verbmem(folder / VERBMEM_FILE)
    return data
