"""Where a page's data comes from: a typed file or folder (read again when it changes), and result folders read
through one cache shared by the Tradeoffs and Report pages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.common.cache import is_complete
from core.common.errors import UserError
from core.common.limits import MAX_PATH_CHARS, MAX_PATH_LIST_CHARS
from core.evaluation import ingest as ingestion
from core.evaluation.ingest import IngestResult
from core.evaluation.results import EXAMPLE_RESULTS, fingerprint
from core.unlearn.demo import DemoExperiment


def typed_path(label: str, key: str, placeholder: str, hint: str) -> tuple[str, int] | None:
    """A path text box; the typed path and its modification time (0 when it does not exist, left to the reader to
    report), or None with `hint` on the page while the box is empty. The time goes into a reader's cache key, so
    an edited file is read again."""
    text = st.text_input(label, key=key, max_chars=MAX_PATH_CHARS, placeholder=placeholder)
    if not text.strip():
        st.info(hint)
        return None
    path = Path(text.strip()).expanduser()
    return str(path), path.stat().st_mtime_ns if path.exists() else 0


@st.cache_data(show_spinner=False, max_entries=8)
def _ingest(paths: tuple[str, ...], oracle: str | None, files: tuple[tuple[str, int, int], ...]) -> IngestResult:
    """Ingest once per (paths, oracle, file mtimes and sizes): `files` is in the key, so edited results reload.
    `ingest` is looked up when called, as the pages did when they imported it on every run."""
    return ingestion.ingest(list(paths), oracle=oracle)


def load_results(paths: Sequence[str], oracle: str | None) -> IngestResult:
    """The result folders (and oracle) ingested, from the cache while none of their files changed."""
    with st.spinner("Reading results…"):
        return _ingest(tuple(paths), oracle, fingerprint([*paths, *([oracle] if oracle else [])]))


@dataclass(frozen=True)
class DefaultResults:
    """What a results page opens on before anything is chosen: folders, oracle, and a line saying what it is."""

    paths: tuple[str, ...]
    oracle: str | None
    note: str


def demo_evaluation() -> Path | None:
    """The demo experiment's own evaluation (target, oracle and every method's checkpoints, written by its build),
    the newest complete one; None before the build has evaluated anything."""
    try:
        folder = DemoExperiment().root / "evaluations"
    except (UserError, OSError):
        return None
    if not folder.is_dir():
        return None
    done = [path for path in folder.iterdir() if path.is_dir() and is_complete(path)]
    return max(done, key=lambda path: path.stat().st_mtime_ns) if done else None


def default_results() -> DefaultResults | None:
    """The demo experiment's evaluation when it exists, otherwise the bundled real open-unlearning example; None
    when neither is there."""
    demo = demo_evaluation()
    if demo is not None:
        return DefaultResults(
            (str(demo),),
            None,
            "Showing the demo experiment's own evaluation: the target, the oracle (retrained without the forget "
            "set) and every unlearning method's checkpoints, evaluated on the demo forget and retain sets.",
        )
    if EXAMPLE_RESULTS.is_dir():
        return DefaultResults(
            (str(EXAMPLE_RESULTS),),
            None,
            "Showing the bundled example: real open-unlearning outputs (TOFU with Llama-3.2-1B-Instruct, MUSE with "
            "Llama-2-7B), until the demo experiment has evaluated its own models (see its progress in the sidebar).",
        )
    return None


def _use_example(key: str) -> None:
    st.session_state[key] = str(EXAMPLE_RESULTS)


def result_folder_inputs(
    prefix: str, label: str, paths_help: str | None = None, oracle_help: str | None = None
) -> tuple[str, str]:
    """The example button, a box of result folders (`<prefix>_paths`) and an optional oracle folder
    (`<prefix>_oracle`); returns (typed folders, oracle) as typed."""
    if EXAMPLE_RESULTS.is_dir():
        st.button("Use the example: real open-unlearning outputs", on_click=_use_example, args=(f"{prefix}_paths",))
    typed = st.text_area(
        label,
        key=f"{prefix}_paths",
        max_chars=MAX_PATH_LIST_CHARS,
        placeholder=str(EXAMPLE_RESULTS),
        help=paths_help,
    )
    oracle = st.text_input(
        "Oracle folder (optional)", key=f"{prefix}_oracle", max_chars=MAX_PATH_CHARS, help=oracle_help
    )
    return typed, oracle
