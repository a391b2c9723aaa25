"""The HTML report's inputs for the report tests of every tier (tests/ is on sys.path: tests/conftest.py): a tiny
random pair, the ingest fixtures with an injected script in names and text, and the full report built from them."""

from __future__ import annotations

import struct
from pathlib import Path

from tiny_models import TinyTokenizer, make_tiny_llama

from core.analyses.probe import ProbeRequest
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


def build_full_report(pair: ModelPair, results) -> Report:
    """Every section: notes, trade-offs, metrics, probes (one without an answer), attribution and layers."""
    probes = [ProbeRequest(f"Who wrote {INJECTION}?", "Jane Doe"), ProbeRequest("The sky is", None)]
    return build_report(
        pair, results=results, sources=[str(GRADDIFF), f"{LEGACY}{INJECTION}"], probes=probes,
        with_attribution=True, with_lens=True, notes=f"# Summary\nFirst line {INJECTION}\n\n- one\n- two",
        title=f"Report {INJECTION}",
    )  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])
