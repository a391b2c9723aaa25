"""Example prompts one click away in the Probe page: questions and answers from the demo forget and retain sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.data.qa import DEMO_DIR, load_split_folder

EXAMPLE_SPLITS = ("forget", "retain")


@dataclass(frozen=True)
class Example:
    """One demo question with its reference answer and the split it comes from."""

    split: str
    question: str
    answer: str

    @property
    def pill(self) -> str:
        """The question cut to 48 characters, as a one-click example pill shows it."""
        return self.question if len(self.question) <= 48 else self.question[:47] + "…"

    @property
    def label(self) -> str:
        return f"{self.split} · {self.question}"


def demo_examples(folder: str | Path = DEMO_DIR, splits: tuple[str, ...] = EXAMPLE_SPLITS) -> list[Example]:
    """Every item of the demo's forget and retain sets, forget first (a UserError when the folder lacks them)."""
    data = load_split_folder(folder, require=splits)
    return [Example(split, item.question, item.answer) for split in splits for item in getattr(data, split)]
