"""What the Tradeoffs page needs on top of ingest: where results are, cache keys, axis choices, clicked points.

Everything here takes and returns plain frames, paths and small dataclasses, so it is tested without Streamlit.
"""

from __future__ import annotations

import html
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from core.common.cache import cache_home
from core.common.errors import UserError
from core.common.paths import ASSETS
from core.data.uploads import store_files, upload_root
from core.evaluation import metrics
from core.evaluation.ingest import forget_truth_ratios
from core.evaluation.tables import IngestResult, rows_at

log = logging.getLogger(__name__)

EXAMPLE_RESULTS = ASSETS / "examples" / "open-unlearning-eval"
OUR_RESULT_HOMES = ("demo", "evals")  # folders of the cache home holding our runs and our evaluation outputs
RESULT_UPLOAD = re.compile(r"^\w+_(EVAL|SUMMARY)\.json$")
_FINGERPRINT_SUFFIXES = {".json", ".csv"}
_SPLIT_ORDER = ("forget", "utility", "retain", "real_authors", "world_facts", "holdout")
X_PREFERRED = (
    "forget_Q_A_Prob", "forget_truth_ratio", "forget_knowmem_ROUGE", "forget_verbmem_ROUGE", "forget_Q_A_ROUGE",
    "forget_quality",
)  # fmt: skip
Y_PREFERRED = ("model_utility", "model_utility_partial", "retain_Q_A_Prob", "retain_knowmem_ROUGE", "retain_Q_A_ROUGE")
FQ_MU = ("model_utility", "forget_quality")
_MIA_ITEM = re.compile(r"^(?P<attack>mia_\w+)/(?P<split>forget|holdout)$")

EXAMPLE_DATA = EXAMPLE_RESULTS.parent  # assets/examples: the project's own example data, always a data root
DATA_ROOTS_ENV = "ULENS_DATA_ROOTS"  # more data roots, os.pathsep-separated (the operator's result folders)
MAX_WALK_DEPTH = 8  # folders below the named one; open-unlearning's deepest layout is run/checkpoint-N/evals
MAX_WALK_ENTRIES = 20_000  # files and folders seen; the example data has a few dozen
MAX_WALK_SECONDS = 2.0  # a walk of a network share or a whole disk stops here instead of holding the page
WALK_CACHE_SECONDS = 10.0  # reruns (every widget change) within this reuse the walk; results written later show up
WALK_CACHE_ENTRIES = 64


# ---------------------------------------------------------------------------------------------- data roots


def data_roots() -> list[Path]:
    """Folders a link may make the server read: the cache home, the uploads folder, the project's example data,
    and those listed in $ULENS_DATA_ROOTS; resolved (symlinks and `..`), so a comparison with them is exact."""
    listed = [part.strip() for part in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if part.strip()]
    roots = [cache_home(), EXAMPLE_DATA, *(Path(part).expanduser() for part in listed)]
    try:
        roots.append(upload_root())
    except UserError as exc:  # another user's folder: not one of ours to read from a link
        log.warning("uploads are not a data root: %s", exc)
    return [root.resolve() for root in roots]


def inside_roots(path: str | Path) -> bool:
    """Whether `path`, with symlinks and `..` resolved, is one of the data roots or inside one."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: not a path we read from a link
        return False
    return any(resolved.is_relative_to(root) for root in data_roots())


def outside_roots(paths: Sequence[str]) -> list[str]:
    """The paths of `paths` that are outside every data root (in order)."""
    return [path for path in paths if not inside_roots(path)]


# ---------------------------------------------------------------------------------------------- bounded walks


@dataclass(frozen=True)
class Walk:
    """The files found under a folder, and why the walk stopped early (None: it saw every entry)."""

    files: tuple[Path, ...]
    entries: int
    stopped: str | None = None

    def check(self, root: str | Path) -> None:
        """Refuse a walk that stopped early: what it missed would be read unbounded, or silently left out."""
        if self.stopped is not None:
            raise UserError(
                f"{root}: stopped after {self.entries:,} files and folders ({self.stopped}); name a narrower folder"
            )


_walks: dict[tuple, tuple[float, Walk]] = {}
_walks_lock = threading.Lock()  # sessions run in threads of one server process


def walk(root: Path, suffixes: frozenset[str] | None = None) -> Walk:
    """Files under folder `root` (with one of `suffixes`, if given), at most MAX_WALK_DEPTH folders down,
    MAX_WALK_ENTRIES entries and MAX_WALK_SECONDS. Kept WALK_CACHE_SECONDS per (folder, its modification time):
    a page reruns on every widget change and must not walk again each time."""
    try:
        stamp = root.stat().st_mtime_ns
    except OSError:
        return Walk((), 0)
    key = (str(root), suffixes, stamp, MAX_WALK_DEPTH, MAX_WALK_ENTRIES, MAX_WALK_SECONDS)
    now = time.monotonic()
    with _walks_lock:
        hit = _walks.get(key)
        if hit is not None and now - hit[0] < WALK_CACHE_SECONDS:
            return hit[1]
    found = _scan(root, suffixes)
    with _walks_lock:
        for old in [k for k, (at, _) in _walks.items() if now - at >= WALK_CACHE_SECONDS]:
            del _walks[old]
        while len(_walks) >= WALK_CACHE_ENTRIES:
            del _walks[next(iter(_walks))]
        _walks[key] = (now, found)
    return found


def clear_walks() -> None:
    """Forget every cached walk (tests; a page never needs to)."""
    with _walks_lock:
        _walks.clear()


def _scan(root: Path, suffixes: frozenset[str] | None) -> Walk:
    """The walk itself: depth first, symlinked folders not followed (as Path.rglob), unreadable folders skipped."""
    deadline = time.monotonic() + MAX_WALK_SECONDS
    files: list[Path] = []
    entries, stack = 0, [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    entries += 1
                    stopped = _over_bounds(entries, deadline)
                    if stopped:
                        return Walk(tuple(sorted(files)), entries, stopped)
                    if entry.is_dir(follow_symlinks=False):
                        if depth >= MAX_WALK_DEPTH:
                            return Walk(tuple(sorted(files)), entries, f"folders more than {MAX_WALK_DEPTH} deep")
                        stack.append((Path(entry.path), depth + 1))
                    elif (suffixes is None or Path(entry.name).suffix in suffixes) and entry.is_file():
                        files.append(Path(entry.path))
        except OSError:
            log.debug("cannot list %s; skipped", folder)
    return Walk(tuple(sorted(files)), entries)


def _over_bounds(entries: int, deadline: float) -> str | None:
    if entries > MAX_WALK_ENTRIES:
        return f"more than {MAX_WALK_ENTRIES:,}"
    if time.monotonic() > deadline:
        return f"more than {MAX_WALK_SECONDS:g} s"
    return None


# ---------------------------------------------------------------------------------------------- sources


def our_result_folders(home: Path | None = None) -> list[Path]:
    """Runs under the cache home's demo/ and evals/ folders that hold open-unlearning result files. Each folder is
    looked through with one bounded, cached walk: two pages draw this list on every rerun."""
    home = home or cache_home()
    found: set[Path] = set()
    for name in OUR_RESULT_HOMES:
        root = home / name
        results = walk(root, frozenset({".json"}))
        if results.stopped:
            log.warning("%s: stopped after %d entries (%s); runs beyond are not listed", root, results.entries,
                        results.stopped)  # fmt: skip
        for path in results.files:
            parts = path.relative_to(root).parts
            if len(parts) > 1 and RESULT_UPLOAD.match(path.name):
                found.add(root / parts[0])
    return sorted(found)


def parse_paths(text: str) -> list[str]:
    """Paths typed one per line (blank lines and surrounding spaces ignored), `~` expanded."""
    return [str(Path(line.strip()).expanduser()) for line in text.splitlines() if line.strip()]


def fingerprint(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """(file, mtime_ns, size) of every JSON/CSV file under `paths`: a cache key that changes when results do.

    Folders are walked within the bounds of `walk`; one that goes beyond them is a UserError, so ingest (which
    walks the same folders itself) is never asked to read it. The files are stat'ed on every call: an edited
    result changes the key at once, a new one within WALK_CACHE_SECONDS."""
    entries = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = walk(path, frozenset(_FINGERPRINT_SUFFIXES))
            found.check(path)
            files = list(found.files)
        else:
            files = [path] if path.suffix in _FINGERPRINT_SUFFIXES and path.is_file() else []
        for file in files:
            try:
                stat = file.stat()
            except OSError:  # removed since the (cached) walk
                continue
            entries.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


def store_result_uploads(files: Sequence[tuple[str, bytes]], run_name: str) -> Path:
    """Uploaded `<BENCH>_EVAL.json` / `<BENCH>_SUMMARY.json` files as one run folder named `run_name`."""
    for name, _ in files:
        if not RESULT_UPLOAD.match(name):
            raise UserError(f"{name}: not an open-unlearning result file (expected a name like TOFU_EVAL.json)")
    return store_files(files, subfolder=run_name.strip() or "uploaded")


def result_paths(
    picked: Sequence[str], typed: str, uploads: Sequence[tuple[str, bytes]] = (), run_name: str = "uploaded"
) -> list[str]:
    """The folders to ingest: those picked, those typed one per line, and the uploaded files' run folder."""
    paths = [*picked, *parse_paths(typed)]
    if uploads:
        paths.append(str(store_result_uploads(uploads, run_name)))
    if not paths:
        raise UserError("name at least one result folder, pick one of ours, or upload result files")
    return paths


# ---------------------------------------------------------------------------------------------- axes


def metric_options(summary: pd.DataFrame) -> list[str]:
    """Metrics with at least one value and a known better direction (usable as a tradeoff axis), forget first."""
    present = summary.loc[summary["value"].notna(), "metric"].unique()
    usable = [name for name in present if _has_direction(name)]
    usable = [name for name in usable if not (name.endswith("/auc") and name.removesuffix("/auc") in usable)]
    return sorted(usable, key=lambda name: (_split_rank(name), name))


def _has_direction(name: str) -> bool:
    return bool(metrics.direction_arrow(name))


def _split_rank(name: str) -> int:
    split = metrics.describe(name).split
    if metrics.is_forgetting_split(split):
        return 0
    return _SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER)


def default_axes(options: Sequence[str], summary: pd.DataFrame | None = None) -> tuple[str, str]:
    """(x, y): a forget-set metric against a utility/retain one, by preference, from `options`. Given the `summary`,
    a preferred metric with the same value for every run is passed over (a flat axis shows nothing; model_utility,
    a harmonic mean, is 0 wherever one of its nine components is, e.g. a real-authors ROUGE of 0)."""
    if not options:
        raise UserError("the results hold no metric with a known better direction to plot")
    flat = set() if summary is None else _constant_metrics(summary)
    x = next((name for name in X_PREFERRED if name in options and name not in flat), None)
    x = x or next((name for name in X_PREFERRED if name in options), options[0])
    rest = [name for name in options if name != x] or [x]
    y = next((name for name in Y_PREFERRED if name in rest and name not in flat), None)
    return x, y or next((name for name in Y_PREFERRED if name in rest), rest[0])


def _constant_metrics(summary: pd.DataFrame) -> set[str]:
    """Metrics whose values (NaN left out) are all equal across the summary's rows."""
    values = summary.loc[summary["value"].notna(), ["metric", "value"]]
    distinct = values.groupby("metric")["value"].nunique()
    return set(distinct[distinct <= 1].index)


def has_points(summary: pd.DataFrame, x_metric: str, y_metric: str) -> bool:
    """Whether any run has values for both metrics (a chart with nothing on it is not worth drawing)."""
    rows = summary[summary["metric"].isin([x_metric, y_metric]) & summary["value"].notna()]
    counts = rows.groupby(["model", "method", "step"], dropna=False)["metric"].nunique()
    needed = len({x_metric, y_metric})
    return bool((counts >= needed).any())


# ---------------------------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One evaluated checkpoint: the run (model folder), its method and training step (None = final)."""

    model: str
    method: str
    step: int | None

    @property
    def label(self) -> str:
        return f"{self.model} · {'final' if self.step is None else f'step {self.step}'}"


def point_from_selection(figure: go.Figure, points: Sequence[Mapping[str, Any]]) -> Point | None:
    """The checkpoint behind the first selected point, read from the clicked trace's customdata in `figure`.

    core.present.figures.tradeoffs puts (escaped model, escaped method, step label) in every point's customdata.
    """
    for point in points:
        curve, index = point.get("curve_number"), point.get("point_index", point.get("point_number"))
        if curve is None or index is None or not 0 <= curve < len(figure.data):
            continue
        custom = figure.data[curve].customdata
        if custom is None or not 0 <= index < len(custom):
            continue
        model, method, step = (html.unescape(str(value)) for value in custom[index])
        return Point(model, method, None if step == "final" else int(step))
    return None


def run_points(summary: pd.DataFrame) -> list[Point]:
    """Every (model, method, step) in the summary, in its order."""
    runs = summary[["model", "method", "step"]].drop_duplicates()
    rows = runs.itertuples(index=False)
    return [Point(model, method, None if pd.isna(step) else int(step)) for model, method, step in rows]


def checkpoint_metrics(summary: pd.DataFrame, point: Point) -> pd.DataFrame:
    """The checkpoint's metrics: split, metric, value, better direction and the file it came from."""
    rows = rows_at(summary, point.model, point.step)
    if rows.empty:
        raise UserError(f"no metrics for {point.label}")
    table = rows[["split", "metric", "value", "source"]].copy()
    table.insert(3, "better", table["metric"].map(metrics.direction_arrow))
    order = table["metric"].map(_split_rank)
    return table.assign(_order=order).sort_values(["_order", "metric"]).drop(columns="_order").reset_index(drop=True)


def split_bar_metrics(summary: pd.DataFrame, point: Point) -> list[str]:
    """The checkpoint's per-split metrics on a 0–1 scale (probabilities, ROUGE, truth ratios, AUCs) for one bar chart.

    Unbounded ones (privleak in percent, mean MIA scores) are left out: one of them would flatten every other bar.
    """
    rows = rows_at(summary, point.model, point.step)
    per_split = rows["split"].isin(metrics.SPLIT_BY_PREFIX.values()) & ~rows["metric"].str.contains("/")
    bounded = rows["value"].between(0.0, 1.0)
    return rows.loc[per_split & bounded, "metric"].tolist()


def truth_ratio_oracles(result: IngestResult, point: Point) -> list[Point]:
    """Oracle checkpoints with per-item forget truth ratios to compare `point` with (its own run excluded)."""
    candidates = [run for run in run_points(result.summary) if run.method == "oracle" and run.model != point.model]
    return [run for run in candidates if forget_truth_ratios(result.items, run.model, run.step) is not None]


def has_truth_ratios(result: IngestResult, point: Point) -> bool:
    return forget_truth_ratios(result.items, point.model, point.step) is not None


def mia_attacks(items: pd.DataFrame, point: Point) -> list[str]:
    """MIA attacks (e.g. mia_min_k) with per-item scores on both the forget and the holdout split at `point`."""
    rows = rows_at(items, point.model, point.step)
    names = rows.loc[rows["field"].eq("score"), "metric"].unique()
    splits: dict[str, set[str]] = {}
    for name in names:
        match = _MIA_ITEM.match(name)
        if match:
            splits.setdefault(match["attack"], set()).add(match["split"])
    return sorted(attack for attack, found in splits.items() if found == {"forget", "holdout"})
