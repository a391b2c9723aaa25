"""The names a report gives models and runs: as the user typed or chose them, never a local path.

The two sides of the pair are called by their specs as typed (`demo:target`) or a `--label base=…`; runs in the
results by their name (`npo`, with the inferred method's spelling when it is the same word: `NPO`) or a
`--label RUN=…`; a checkpoint adds its step ("NPO, step 12"). Anything that still looks like an absolute path is cut
to its last component.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from core.common.errors import UserError
from core.present.names import scrub_paths

SIDES = ("base", "unlearned")
MAX_LABEL_CHARS = 120


def parse_labels(texts: Sequence[str]) -> dict[str, str]:
    """`KEY=TEXT` pairs (KEY: base, unlearned or a run name); a later pair for the same key wins."""
    labels: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key, value = key.strip(), " ".join(value.split())
        if not sep or not key or not value:
            raise UserError(f"--label {text!r}: write it as KEY=TEXT (KEY: base, unlearned or a run name)")
        if len(value) > MAX_LABEL_CHARS:
            raise UserError(f"--label {key}: at most {MAX_LABEL_CHARS} characters")
        labels[key] = value
    return labels


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


class Labels:
    """Display names for the pair's sides and the runs of a results table."""

    def __init__(self, given: Mapping[str, str] | None = None, runs: Iterable[tuple[str, Any]] = ()) -> None:
        self.given = {key: scrub_paths(value) for key, value in (given or {}).items() if value and value.strip()}
        self.methods = {str(model): method for model, method in runs}
        unknown = sorted(set(self.given) - set(SIDES) - set(self.methods))
        if unknown:
            choices = ", ".join([*SIDES, *sorted(self.methods)])
            raise UserError(f"no model or run called {', '.join(unknown)} to label; choose from {choices}")
        names = [self.run(model) for model in self.methods]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UserError(f"two runs would be shown as {', '.join(repeated)}: give each its own --label")

    def side(self, side: str) -> str:
        """The base or unlearned model's name ("in-memory model" when neither a spec nor a label gave one)."""
        return self.given.get(side) or "in-memory model"

    def run(self, model: str) -> str:
        """A run's name: its label, else the method's spelling when it is the run's name in other case, else the
        run's name (its last path component, if it is one)."""
        if model in self.given:
            return self.given[model]
        method = self.methods.get(model)
        if isinstance(method, str) and method.lower() == model.lower():
            return method
        return scrub_paths(model)

    def at_step(self, model: str, step: Any) -> str:
        """A run at one evaluation: "NPO, step 12"; the final evaluation has no step."""
        name = self.run(model)
        return name if _is_missing(step) else f"{name}, step {int(step)}"

    def relabel(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of a results frame with each run's `model` replaced by its name (charts show that column)."""
        if frame.empty:
            return frame.copy()
        return frame.assign(model=[self.run(str(model)) for model in frame["model"]])
