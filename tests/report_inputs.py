"""The HTML report's inputs for the report tests of every tier (tests/ is on sys.path: tests/conftest.py): a tiny
random pair, the ingest fixtures with an injected script in names and text, and the full report built from them."""

from __future__ import annotations

import struct
from pathlib import Path

from tiny_models import TinyTokenizer, make_tiny_llama

from core.analyses.probe import ProbeRequest
from core.attacks.base import AttackOutcome, recovery_percent
from core.attacks.runner import RobustnessResult
from core.evaluation.ingest import ingest
from core.models.pair import ModelPair
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


def build_full_report(pair: ModelPair, results) -> Report:
    """Every section: notes, trade-offs, metrics, robustness, probes (one without an answer), attribution and
    layers; labels with markup for a side and a run."""
    probes = [ProbeRequest(f"Who wrote {INJECTION}?", "Jane Doe"), ProbeRequest("The sky is", None)]
    return build_report(
        pair, results=results, sources=[str(GRADDIFF), f"{LEGACY}{INJECTION}"], probes=probes,
        with_attribution=True, with_lens=True, notes=f"# Summary\nFirst line {INJECTION}\n\n- one\n- two",
        title=f"Report {INJECTION}", robustness=robustness_result(),
        labels={"base": f"demo:target{INJECTION}", "unlearned": str(FIXTURES / "npo-run"), GRADDIFF.name: "GradDiff"},
    )  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])
