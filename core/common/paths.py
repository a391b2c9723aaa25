"""Where the project's own files are: the repository root and its assets/ folder (demo data, example results,
attack prompts). One place, so moving a module never changes what a path points at."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ASSETS = PROJECT_ROOT / "assets"
