"""The HTML report's inputs for the report tests of every tier (tests/ is on sys.path: tests/conftest.py): a tiny
random pair, the ingest fixtures with an injected script in names and text, a synthetic robustness result, the full
report built from them, and MetricTables, the report's metric tables read back from its HTML as a reader sees them."""

from __future__ import annotations

import struct
from html.parser import HTMLParser
from pathlib import Path

from tiny_models import TinyTokenizer, make_tiny_llama

from core.analyses.lens import logit_lens
from core.analyses.multi import CheckpointLens, MultiProbeResult
from core.analyses.probe import ProbeRequest, score
from core.attacks.base import AttackOutcome, recovery_percent
from core.attacks.runner import RobustnessResult
from core.evaluation.ingest import ingest
from core.models.pair import ModelPair
from core.present.report.checkpoints import CheckpointsView
from core.present.report.model import Report, build_report

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ingest"
GRADDIFF = FIXTURES / "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"
ORACLE = FIXTURES / "tofu_Llama-3.2-1B-Instruct_retain90"
LEGACY = FIXTURES / "legacy"
INJECTION = "<script>window.__pwned = 1; alert(1)</script>"


def tiny_pair() -> ModelPair:
    return ModelPair.from_models(make_tiny_llama(seed=0), make_tiny_llama(seed=1), TinyTokenizer())


def ingested_results():
    return ingest([GRADDIFF, LEGACY], oracle=ORACLE)


BASE_P, UNLEARNED_P = 0.6, 0.2  # clean forget probabilities of the synthetic robustness result


def outcome(attack: str, attacked: float | None, **fields) -> AttackOutcome:
    """One outcome on 8 items against the clean 0.6 / 0.2; recovery % by core.attacks.base.recovery_percent."""
    pct, reason = recovery_percent(attacked, UNLEARNED_P, BASE_P) if attacked is not None else (None, "skipped")
    fields.setdefault("headline", True)
    return AttackOutcome(attack, fields.pop("variant", "mean"), 8, BASE_P, UNLEARNED_P, attacked,
                         recovery_pct=pct, reason=reason, **fields)  # fmt: skip


def robustness_result() -> RobustnessResult:
    """Three attacks: paraphrase (0.25 → 12.5 %), relearning over three steps (0.5 at the end → 75 %) and one
    not measured; the pair named by local paths and markup, as a robustness run on disk would be."""
    outcomes = [
        outcome("paraphrase", 0.25),
        outcome("relearn", 0.2, variant="step 0", step=0, headline=False),
        outcome("relearn", 0.35, variant="step 5", step=5, headline=False),
        outcome("relearn", 0.5, variant="step 10", step=10),
        outcome(f"quantize{INJECTION}", None),
    ]
    pair = {"base": f"{Path.home()}/.cache/models/target{INJECTION}", "unlearned": str(FIXTURES / "npo")}
    return RobustnessResult(pair, 8, BASE_P, UNLEARNED_P, 0.01, {}, outcomes)


def checkpoints_of_pair(pair: ModelPair, request: ProbeRequest) -> CheckpointsView:
    """A Checkpoints view whose models are the pair's unlearned side three times: a run (markup in its method's
    name) at steps 1 and 2, and a single model; the lens from the pair's own logit lens (mean over answer tokens)."""
    probe = score(pair, [request])[0]
    lens = logit_lens(pair, request.prompt, request.answer)
    models, runs, steps = (
        [f"npo{INJECTION}@1", f"npo{INJECTION}@2", "oracle"],
        [f"npo{INJECTION}"] * 2 + [None],
        [1, 2, None],
    )

    def means(values: list[list[float]]) -> list[float]:
        return [sum(row) / len(row) for row in values]

    checkpoint_lens = CheckpointLens(
        request.prompt, request.answer, False, lens.answer_tokens, lens.layers, models, runs, steps,
        [means(lens.unlearned.logprob)] * 3, [means(lens.unlearned.rank)] * 3, means(lens.base.logprob),
        means(lens.base.rank),
    )  # fmt: skip
    return CheckpointsView(MultiProbeResult(models, [probe] * 3), runs, steps, "demo:target", checkpoint_lens)


def build_full_report(pair: ModelPair, results) -> Report:
    """Every section: notes, trade-offs, metrics, robustness, probes (one without an answer), attribution, layers
    and checkpoints; labels with markup for a side and a run."""
    probes = [ProbeRequest(f"Who wrote {INJECTION}?", "Jane Doe"), ProbeRequest("The sky is", None)]
    return build_report(
        pair, results=results, sources=[str(GRADDIFF), f"{LEGACY}{INJECTION}"], probes=probes,
        with_attribution=True, with_lens=True, notes=f"# Summary\nFirst line {INJECTION}\n\n- one\n- two",
        title=f"Report {INJECTION}", robustness=robustness_result(), checkpoints=[checkpoints_of_pair(pair, probes[0])],
        labels={"base": f"demo:target{INJECTION}", "unlearned": str(FIXTURES / "npo-run"), GRADDIFF.name: "GradDiff"},
    )  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


class MetricTables(HTMLParser):
    """The metric tables of a report's HTML read back: `cells[(run label, raw key)]` is the text a reader sees,
    `names[raw key]` the metric's shown name (its row header without the unit line), `runs` the column labels."""

    def __init__(self, document: str) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.names: dict[str, str] = {}
        self.runs: list[str] = []
        self._table_runs: list[str] = []
        self._in_metrics = self._in_head = False
        self._cell: list[str] | None = None
        self._kind, self._key, self._column = "", "", 0
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self._in_metrics = "metrics" in (found.get("class") or "").split()
            self._table_runs = []
        elif self._in_metrics and tag == "thead":
            self._in_head = True
        elif self._in_metrics and tag == "tr":
            self._column = 0
        elif self._in_metrics and tag in ("th", "td"):
            classes = (found.get("class") or "").split()
            self._kind = "metric" if "metric" in classes else "run" if "run" in classes else tag
            if self._kind == "metric":
                self._key = (found.get("title") or "").split(":", 1)[0]
            self._cell = []
        elif self._cell is not None and tag in ("br", "small", "sup"):
            self._cell.append("\n")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_metrics = False
        elif tag == "thead":
            self._in_head = False
        elif self._cell is not None and tag in ("th", "td"):
            text, self._cell = "".join(self._cell), None
            first = text.split("\n")[0].strip()
            if self._kind == "run":
                self._table_runs.append(first)
                self.runs.append(first)
            elif self._kind == "metric":
                self.names[self._key] = first
            elif tag == "td":
                self.cells[(self._table_runs[self._column], self._key)] = text.strip()
                self._column += 1
