"""The report as a stakeholder reads it: the generated summary on small synthetic results (every sentence worked out
by hand), labels instead of local paths, the metrics table on its side and split to fit, the robustness section,
the print version the PDF is made from (no Chromium here: tests/e2e/test_report_e2e.py prints it) and the CLI."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from report_inputs import (
    FIXTURES,
    GRADDIFF,
    INJECTION,
    ORACLE,
    MetricTables,
    build_full_report,
    ingested_results,
    robustness_result,
    tiny_pair,
)

from core.attacks import ATTACKS
from core.cli import main
from core.common.errors import UserError
from core.evaluation.tables import IngestResult
from core.present.figures.robustness import ROBUSTNESS_COLUMNS
from core.present.names import format_value, metric_name
from core.present.report import export, pdf
from core.present.report.labels import Labels, parse_labels
from core.present.report.layout import MAX_RUN_COLUMNS, chunks
from core.present.report.model import Report, build_report

ROOT = Path(__file__).resolve().parents[3]
METRICS = ("forget_Q_A_Prob", "model_utility", "forget_quality")
ROWS = [  # model, method, step, (forget probability, model utility, forget quality)
    ("target", "target", None, (0.671, 0.447, 0.00219)),
    ("tofu_x_retain90", "oracle", None, (0.352, 0.403, 1.0)),
    ("npo", "NPO", 6, (0.504, 0.472, 0.132)),
    ("npo", "NPO", 12, (0.29712, 0.4925, 0.7812)),
    ("graddiff", "GradDiff", 6, (0.541, 0.470, 0.85)),
    ("graddiff", "GradDiff", 12, (0.364, 0.484, 0.503)),
    ("rmu", "RMU", 12, (0.0481, 0.446, 0.00712)),
]


def synthetic(rows=ROWS) -> IngestResult:
    records = [
        {"model": model, "method": method, "step": step, "split": "forget", "metric": metric, "value": value,
         "source": f"/home/someone/evals/{model}"}
        for model, method, step, values in rows
        for metric, value in zip(METRICS, values, strict=True)
    ]  # fmt: skip
    summary = pd.DataFrame(records).astype({"step": "Int64"})
    empty = pd.DataFrame(columns=["model", "method", "step", "metric", "field", "index", "option", "value", "source"])
    return IngestResult(summary, empty, pd.DataFrame(columns=["model"]))


@pytest.fixture(scope="module")
def report() -> Report:
    return build_report(None, results=synthetic(), robustness=robustness_result())


# ---------------------------------------------------------------------------------------------- summary


def test_summary_sentences_worked_by_hand(report: Report) -> None:
    summary = report.summary()
    assert summary.best == "npo"  # last evaluations: npo 0.7812, graddiff 0.503, rmu 0.00712
    assert summary.findings[:5] == [
        "NPO, step 12 is the run closest to the oracle: forget quality 0.781 (the test cannot tell it from the "
        "oracle; 1 would be the oracle itself).",
        "It forgot: forget-set answer probability went from 0.671 (target, before unlearning) to 0.297; the oracle, "
        "never trained on the forget set, has 0.352.",
        "It kept its utility: model utility went from 0.447 (target) to 0.492.",  # 0.4925 is 0.49249999… in binary
        "GradDiff, step 12: forget quality 0.503; forget-set answer probability 0.364; model utility 0.484.",
        "RMU, step 12: forget quality 0.00712; forget-set answer probability 0.048; model utility 0.446. That is "
        "below the oracle: it over-forgets.",  # 0.0481 < 0.352 / 2
    ]
    # robustness: relearning 0.2 → 0.5 of the 0.2 → 0.6 gap = 75 %, paraphrase 0.25 → 12.5 %
    assert summary.findings[5] == (
        "Under attack, relearn brings back the most: 75.0 % of the forgotten answer probability (the forgetting "
        "does not hold under relearn). All attacks: relearn 75.0 %, paraphrase 12.5 % (0 % = stays forgotten, "
        "100 % = back to the base)."
    )
    assert "retrained on 90 % of the data (without the forget set), tofu_x_retain90" in summary.caveats[0]
    assert summary.caveats[1] == (
        "Figures are each run's last evaluation; an earlier checkpoint, GradDiff, step 6, has a higher forget "
        "quality (0.85)."
    )
    assert summary.caveats[2].startswith("The attacks ran on 8 forget items of one pair (target<script>")
    assert str(Path.home()) not in " ".join(summary.caveats)
    assert summary.caveats[3] == f"Not measured: quantize{INJECTION} (the robustness section says why)."


def test_summary_quotes_the_figures_the_table_shows(report: Report) -> None:
    document = report.render_html()
    tables = MetricTables(document)
    section = document[document.index('id="section-summary"') : document.index('id="section-metrics"')]
    first = html.unescape(re.search(r"<li>(.*?)</li>", section).group(1))
    assert first.startswith("NPO, step 12 ")
    for key in METRICS:
        cell = tables.cells[("NPO", key)]
        assert cell == format_value(key, dict(zip(METRICS, ROWS[3][3], strict=True))[key])
    assert f"forget quality {tables.cells[('NPO', 'forget_quality')]} " in first
    assert re.findall(r'<section id="section-(\w+)"', document)[:2] == ["summary", "tradeoffs"]  # the summary first


def test_summary_without_oracle_or_robustness() -> None:
    rows = [row for row in ROWS if row[0] in ("target", "npo")]
    rows = [(m, me, s, (fp, mu, None)) for m, me, s, (fp, mu, _) in rows]
    summary = build_report(None, results=synthetic(rows)).summary()
    assert summary.best is None
    assert summary.findings == [
        "It forgot: forget-set answer probability went from 0.671 (target, before unlearning) to 0.297.",
        "It kept its utility: model utility went from 0.447 (target) to 0.492.",
    ]
    assert summary.caveats[0].startswith("No oracle was given, so forget quality is undefined")
    assert summary.caveats[-1].startswith("No robustness result is included")


# ---------------------------------------------------------------------------------------------- labels and paths


def test_labels_parse_and_check() -> None:
    assert parse_labels(["base=demo:target", "npo = NPO,  step 12", "npo=NPO"]) == {"base": "demo:target", "npo": "NPO"}
    for bad in ("no-equals", "=x", "npo="):
        with pytest.raises(UserError, match="KEY=TEXT"):
            parse_labels([bad])
    with pytest.raises(UserError, match="no model or run called nosuch"):
        Labels({"nosuch": "x"}, [("npo", "NPO")])
    with pytest.raises(UserError, match="two runs would be shown as Same"):
        Labels({"a": "Same", "b": "Same"}, [("a", "x"), ("b", "y")])
    labels = Labels({"base": "/home/me/models/smollm2", "rmu": "RMU (c = 300)"}, [("npo", "NPO"), ("rmu", "RMU")])
    assert (labels.side("base"), labels.side("unlearned")) == ("smollm2", "in-memory model")
    assert (labels.at_step("npo", 12), labels.at_step("rmu", None)) == ("NPO, step 12", "RMU (c = 300)")


def test_full_report_has_no_local_path_and_shows_labels() -> None:
    report = build_full_report(tiny_pair(), ingested_results())
    document = report.render_html()
    for path in (FIXTURES, ROOT, Path.home()):
        assert str(path) not in document, path
    pair = document[document.index('id="section-pair"') :]
    assert f"<td>demo:target{html.escape(INJECTION)}</td>" in pair and "<td>npo-run</td>" in pair
    assert "GradDiff" in MetricTables(document).runs and GRADDIFF.name not in MetricTables(document).runs
    appendix = document[document.index('id="section-appendix"') :]
    assert f"<li>{GRADDIFF.name}</li>" in appendix and "checkpoint-10: checkpoint has no evaluation files" in appendix


# ---------------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize(("count", "sizes"), [(0, []), (1, [1]), (6, [6]), (7, [4, 3]), (12, [6, 6]), (13, [5, 4, 4])])
def test_chunks_are_even_and_bounded(count: int, sizes: list[int]) -> None:
    parts = chunks(count)
    assert [len(part) for part in parts] == sizes
    assert [i for part in parts for i in part] == list(range(count))


def test_wide_results_split_into_parts_with_display_names() -> None:
    rows = [(f"run{i:02d}", "NPO", 5, (0.1 * (i % 10), 0.4, 0.01 * i)) for i in range(13)]
    report = build_report(None, results=synthetic(ROWS[:2] + rows))
    document = report.render_html()
    tables = MetricTables(document)
    assert document.count('<table class="metrics"') == 3  # 15 columns: 5 + 5 + 5
    assert len(tables.runs) == 15 and len(set(tables.runs)) == 15
    parts = re.findall(r'<table class="metrics".*?</table>', document, re.S)
    assert all(part.count('<th class="run') <= MAX_RUN_COLUMNS for part in parts)
    assert tables.names == {key: metric_name(key).name for key in METRICS}
    for key in METRICS:  # the raw key in the hover and in the footnotes
        assert f'title="{html.escape(key)}: ' in document and f"<code>{html.escape(key)}</code>" in document
    assert tables.cells[("run07", "forget_quality")] == "0.07"


# ---------------------------------------------------------------------------------------------- robustness


def test_robustness_section_table_and_chart(report: Report) -> None:
    result = robustness_result()
    table = report.robustness_table().frame
    assert table.iloc[:, 0].tolist() == [o.attack for o in result.headlines()]
    assert table[ROBUSTNESS_COLUMNS["recovery_pct"]].tolist()[:2] == pytest.approx([12.5, 75.0])
    assert table["what it does"].tolist() == [ATTACKS["paraphrase"].description, ATTACKS["relearn"].description, ""]
    chart = report.robustness_charts()[0].figure
    assert list(chart.data[0].y) == [o.recovery_pct for o in result.headlines()]
    assert [c.name for c in report.robustness_charts()] == ["robustness-recovery", "robustness-relearning"]
    document = report.render_html()
    assert 'id="section-robustness"' in document and INJECTION not in document


# ---------------------------------------------------------------------------------------------- print version


def test_print_version_has_inline_svg_and_no_scripts(report: Report, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    monkeypatch.setattr(
        pdf, "chart_svg", lambda chart: drawn.append(chart.name) or f"<svg><text>{chart.name}</text></svg>"
    )
    document = pdf.print_html(report)
    assert drawn == [chart.name for chart in report.charts()]
    assert document.count('<figure class="chart-static"') == len(drawn)
    assert "<script" not in document and "Plotly" not in document
    assert "Content-Security-Policy" in document and "default-src 'none'" in document
    assert "section + section { break-before: page;" in document  # a page break between sections


def test_chart_svg_keeps_no_script_or_handler(report: Report, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = (b'<?xml version="1.0"?><!DOCTYPE svg><svg width="10" onload="steal()"><script>steal()</script>'
               b"<foreignObject><div>x</div></foreignObject><text>ok</text></svg>")  # fmt: skip
    monkeypatch.setattr(export, "figure_bytes", lambda *args, **kwargs: hostile)
    assert pdf.chart_svg(report.charts()[0]) == '<svg width="10"><text>ok</text></svg>'


def test_pdf_without_chromium_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "chromium_path", lambda: None)
    with pytest.raises(UserError, match="PDF export needs Chromium"):
        pdf.html_to_pdf("<p>x</p>")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_robustness_labels_and_pdf_errors(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "attacks"
    folder.mkdir()
    (folder / "robustness.json").write_text(json.dumps(robustness_result().to_dict()), encoding="utf-8")
    out = tmp_path / "r.html"
    base = ["report", "--results", str(GRADDIFF), "--oracle", str(ORACLE), "--out", str(out)]
    assert main([*base, "--robustness", str(folder), "--label", f"{GRADDIFF.name}=Grad <b>Diff</b>"]) == 0
    text = out.read_text(encoding="utf-8")
    assert 'id="section-robustness"' in text and "Grad <b>Diff</b>" in MetricTables(text).runs  # decoded text
    assert "Grad <b>Diff</b>" not in text and str(tmp_path) not in text and str(ROOT) not in text
    assert main([*base, "--robustness", str(tmp_path / "none")]) == 2
    assert "no robustness.json there" in capsys.readouterr().err
    assert main([*base, "--label", "oops"]) == 2
    assert "KEY=TEXT" in capsys.readouterr().err
    assert main([*base, "--label", "nosuch=x"]) == 2
    assert "no model or run called nosuch" in capsys.readouterr().err
    monkeypatch.setattr(export, "chromium_path", lambda: None)
    assert main([*base, "--pdf"]) == 2
    assert "PDF export needs Chromium" in capsys.readouterr().err


def test_summary_without_target() -> None:
    rows = [row for row in ROWS if row[0] in ("tofu_x_retain90", "npo")]
    summary = build_report(None, results=synthetic(rows)).summary()
    assert summary.findings == [
        "NPO, step 12 is the run closest to the oracle: forget quality 0.781 (the test cannot tell it from the "
        "oracle; 1 would be the oracle itself).",
        "It forgot: forget-set answer probability is 0.297 (no target among the results to compare with); the "
        "oracle, never trained on the forget set, has 0.352.",
        "It has model utility 0.492.",
    ]
    assert (
        summary.caveats[1]
        == "Figures are each run's last evaluation; no earlier checkpoint has a higher forget quality."
    )


def test_forget_quality_caveat_counts_the_forget_items() -> None:
    """The fixtures hold per-item truth ratios for 4 forget items (TOFU_EVAL.json's value_by_index)."""
    results = ingested_results()
    items = results.items
    truth = items[items["metric"].eq("forget_truth_ratio") & items["model"].eq(GRADDIFF.name) & items["step"].isna()]
    count = len(set(truth["index"]))
    assert count == 4
    caveat = build_report(None, results=results).summary().caveats[0]
    assert f"a KS-test p-value on {count} forget items, not a distance" in caveat


def test_summary_of_probes() -> None:
    """Deltas −1.5 and −0.25: mean −0.875; one probe is quoted on its own."""
    from types import SimpleNamespace

    from core.present.report import summary as summary_module

    probes = [SimpleNamespace(delta=-1.5), SimpleNamespace(delta=-0.25)]
    assert summary_module._probe_line(probes) == (
        "On the 2 probes, the unlearned model's answer log-probability changed by -0.875 on average "
        "(from -1.500 to -0.250)."
    )
    assert summary_module._probe_line(probes[:1]) == (
        "On the probe, the unlearned model's answer log-probability changed by -1.500."
    )
