"""JSON for dataclass results: one `to_dict` / `to_json` / `from_json` for every result type that has them."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Self


class JsonResult:
    """Mixed into a dataclass result: `to_dict` is `dataclasses.asdict` (override to add derived fields),
    `to_json` refuses NaN and infinities (they are not JSON), and `from_json` is `from_dict` of the parsed text;
    each class writes its own `from_dict`, which rebuilds its nested types."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        raise NotImplementedError

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))
