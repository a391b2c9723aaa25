"""Result files as text: size-checked UTF-8, JSON, JSON Lines or plain lines (a bad file is a UserError naming it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.common.errors import UserError
from core.common.limits import MAX_RESULT_FILE_BYTES, check_file_size, loads


def read_result_text(path: Path) -> str:
    """A result file as UTF-8 text; too big, unreadable or not UTF-8 is a UserError naming the file (a file over
    MAX_RESULT_FILE_BYTES is refused unread)."""
    try:
        check_file_size(path, MAX_RESULT_FILE_BYTES, "result file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte offset {exc.start}); re-save the file as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def read_jsonl_or_lines(path: Path) -> list[Any]:
    """JSON Lines when the first non-blank line is a JSON object or array, else each non-blank line as text.

    TOFU's idontknow.jsonl is plain text despite its name; a malformed line in a real JSON Lines file is a
    UserError naming the file and line.
    """
    lines = [(number, line) for number, line in enumerate(read_result_text(Path(path)).splitlines(), 1)]
    lines = [(number, line.strip()) for number, line in lines if line.strip()]
    if not lines or not lines[0][1].startswith(("{", "[")):
        return [line for _, line in lines]
    records = []
    for number, line in lines:
        try:
            records.append(loads(line, f"{path}:{number}"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: invalid JSON Lines record ({exc.msg})") from None
    return records


def read_records(path: Path) -> list[Any]:
    """A JSON array (or one object) file, else JSON Lines / plain lines (TOFU ships JSON Lines named .json)."""
    text = read_result_text(Path(path))
    try:
        data = loads(text, str(path))
    except json.JSONDecodeError:
        return read_jsonl_or_lines(path)
    return data if isinstance(data, list) else [data]
