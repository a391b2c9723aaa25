"""Cached evaluations: one JSON file per model, keyed by a hash of the code version, the model's identity, the dataset
and the settings that change numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.common.cache import atomic_write_text, cache_home, content_hash
from core.evaluation.candidates import Candidate
from core.evaluation.settings import EvalSettings

CODE_VERSION = "2"  # bump when a number's meaning changes: cached evaluations are then recomputed


def _cache_path(key: str) -> Path:
    return cache_home() / "eval-cache" / f"{key}.json"


def read_cache(key: str) -> dict[str, Any] | None:
    path = _cache_path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data["logs"] if data.get("key") == key else None


def write_cache(key: str, candidate: Candidate, logs: dict[str, Any]) -> None:
    atomic_write_text(_cache_path(key), json.dumps({"key": key, "model": candidate.label, "logs": logs}))


def cache_key(candidate: Candidate, data: str, settings: EvalSettings) -> str:
    return content_hash(CODE_VERSION, candidate.identity, data, settings.cache_fields())
