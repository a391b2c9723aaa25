"""Integration: the report a stakeholder reads, from the demo experiment's own evaluation (the real SmolLM2 runs in
the cache home, built first where missing as `python -m core demo` does) through `python -m core report` with a
forget-set probe and the logit lens on the demo pair, as HTML and PDF (printed by Debian's Chromium).

The run closest to the oracle is found here with plain pandas from the ingested summary (each run's last
evaluation), independently of the report's own table and summary code; the report must name it and quote the
figures its metrics table shows."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import pandas as pd
import pypdf
import pytest
from report_inputs import MetricTables

from core.cli import main
from core.common.cache import cache_home, is_complete
from core.evaluation.ingest import ingest
from core.present.names import format_value, metric_name
from core.present.report.labels import Labels
from core.unlearn.demo import DemoExperiment

ROOT = Path(__file__).resolve().parents[2]
REFERENCES = ("target", "oracle", "base")
LABELS = {"npo": "NPO"}


@pytest.fixture(scope="module")
def demo_evaluation() -> Path:
    """The demo's evaluation folder (the newest complete one, after building whatever is missing)."""
    experiment = DemoExperiment()
    experiment.build()
    folders = [path for path in (experiment.root / "evaluations").glob("tofu-*") if is_complete(path)]
    assert folders, "the demo build wrote no evaluation"
    return max(folders, key=lambda path: path.stat().st_mtime_ns)


def last_evaluations(summary: pd.DataFrame, metric: str) -> dict[str, tuple[object, float]]:
    """Each unlearning run's value of `metric` at its last evaluation (final, else highest step), by plain pandas."""
    rows = summary[summary["metric"].eq(metric) & ~summary["method"].isin(REFERENCES)].dropna(subset=["value"])
    out = {}
    for model, group in rows.groupby("model"):
        final = group[group["step"].isna()]
        row = final.iloc[-1] if not final.empty else group.loc[group["step"].astype(int).idxmax()]
        out[model] = (row["step"], float(row["value"]))
    return out


def summary_lines(document: str) -> list[str]:
    section = document[document.index('id="section-summary"') :]
    section = section[: section.index("</section>")]
    return [html.unescape(text) for text in re.findall(r"<li>(.*?)</li>", section)]


def assert_stakeholder_report(document: str, summary: pd.DataFrame, labels: Labels) -> None:
    """The summary names the run with the highest forget quality and quotes the table's figures; every metric
    shown has a display name (the raw key only in the hover and footnotes)."""
    quality = last_evaluations(summary, "forget_quality")
    best = max(quality, key=lambda model: quality[model][1])
    step, value = quality[best]
    tables = MetricTables(document)
    label = labels.run(best)
    assert tables.cells[(label, "forget_quality")] == format_value("forget_quality", value)
    first = summary_lines(document)[0]
    assert first.startswith(labels.at_step(best, step) + " is the run closest to the oracle: ")
    assert f"forget quality {tables.cells[(label, 'forget_quality')]} " in first
    forgot = summary_lines(document)[1]
    assert forgot.startswith("It forgot: ") and f" {tables.cells[(label, 'forget_Q_A_Prob')]}" in forgot
    assert tables.names and all(
        metric_name(key).known and shown == metric_name(key).name != key for key, shown in tables.names.items()
    )


def test_demo_report_html_and_pdf(demo_evaluation: Path, tmp_path: Path) -> None:
    forget = DemoExperiment().data.forget.items[0]
    out = tmp_path / "demo-report.html"
    argv = [
        "report", "--results", str(demo_evaluation), "--probe", f"{forget.question}|{forget.answer}", "--lens",
        "--label", "npo=NPO", "--pdf", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    document = out.read_text(encoding="utf-8")
    for path in (cache_home(), ROOT, Path.home(), demo_evaluation):
        assert str(path) not in document, path
    results = ingest([demo_evaluation])
    assert_stakeholder_report(document, results.summary, Labels(LABELS, results.runs()[["model", "method"]].values))
    assert "<td>demo:target</td>" in document and "<td>demo:unlearned</td>" in document  # the specs as typed
    reader = pypdf.PdfReader(io.BytesIO(out.with_suffix(".pdf").read_bytes()))
    text = re.sub(r"\s+", "", " ".join(page.extract_text() for page in reader.pages))
    for line in summary_lines(document):
        assert re.sub(r"\s+", "", line) in text, line
    assert str(cache_home()) not in text and str(ROOT) not in text
