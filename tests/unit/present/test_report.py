"""The HTML report, its CSV tables, chart images and CLI, on a tiny random pair and the ingest fixtures.

Figures in the HTML are compared with the inputs they were built from (summary values, probe deltas), tables with
values read straight from the ingest summary, images by their magic bytes and the PNG's stated size.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs
from report_inputs import GRADDIFF, INJECTION, ORACLE, build_full_report, ingested_results, tiny_pair
from tiny_models import save_tiny_model_dir

from core.analyses.probe import ProbeRequest, score
from core.cli import main
from core.common.errors import UserError
from core.evaluation.ingest import REFERENCE_METHODS
from core.models.pair import ModelPair
from core.present.figures.tradeoffs import tradeoff_figure
from core.present.report import export as report_module
from core.present.report.export import _ExportServer
from core.present.report.model import Report, build_report
from core.present.report.parts import frame_to_csv, metric_table, parse_probe, parse_probes
from core.present.report.render import SECTIONS, notes_html

FIGURE_SCRIPT = re.compile(r'<script type="application/json" id="figure-(\d+)">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def pair() -> ModelPair:
    return tiny_pair()


@pytest.fixture(scope="module")
def results():
    return ingested_results()


@pytest.fixture(scope="module")
def full_report(pair: ModelPair, results) -> Report:
    return build_full_report(pair, results)


@pytest.fixture(scope="module")
def document(full_report: Report) -> str:
    return full_report.render_html()


def figure_specs(document: str) -> list[dict]:
    """The figure JSON embedded in the HTML, in document order (JSON escapes decoded by json.loads)."""
    found = FIGURE_SCRIPT.findall(document)
    assert [int(index) for index, _ in found] == list(range(len(found)))
    return [json.loads(text) for _, text in found]


def chart_index(report: Report, name: str) -> int:
    """The position of the chart called `name` in the document (charts are numbered in report order)."""
    return [chart.name for chart in report.charts()].index(name)


def array(value: list | dict) -> list:
    """A trace array from figure JSON: a plain list, or plotly's typed array {dtype, bdata[, shape]}."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(n) for n in str(value.get("shape", flat.size)).split(",")]).tolist()
    return value


# ---------------------------------------------------------------------------------------------- HTML


def test_plotlyjs_inlined_once_and_every_section_present(document: str, full_report: Report) -> None:
    plotly = get_plotlyjs()
    assert document.count(plotly) == 1
    assert document.count(plotly[:2000]) == 1  # no second copy, whole or partial
    assert "cdn.plot.ly" not in document.replace(plotly, "")
    for key in SECTIONS:
        assert f'id="section-{key}"' in document, key
    assert len(figure_specs(document)) == len(full_report.charts()) == document.count('class="chart"')
    # every chart div names its own figure script
    assert re.findall(r'data-figure="figure-(\d+)"', document) == [str(i) for i in range(len(full_report.charts()))]


def test_injected_script_appears_only_escaped(document: str) -> None:
    assert INJECTION not in document and "<script>window.__pwned" not in document
    assert document.count(html.escape(INJECTION)) >= 4  # title, notes, prompt, sources
    # the only script elements are ours: plotly config + plotly.js, one JSON block per figure, the loader
    scripts = document.count("<script") - get_plotlyjs().count("<script")
    assert scripts == 2 + len(FIGURE_SCRIPT.findall(document)) + 1


def test_notes_markdownish_and_escaped() -> None:
    rendered = notes_html(f"# Title <b>\nnot a heading\n\n- a {INJECTION}\n* b\n\n\n# Heading\n\nplain\nsecond")
    assert rendered == (
        "<p># Title &lt;b&gt;<br>not a heading</p>"
        f"<ul><li>a {html.escape(INJECTION)}</li><li>b</li></ul><h3>Heading</h3><p>plain<br>second</p>"
    )


def test_tradeoff_figure_data_equal_the_summary(document: str, full_report: Report, results) -> None:
    """The chart shows runs by their labels (GradDiff for the labelled run, the others by name)."""
    x, y = full_report.axes
    spec = figure_specs(document)[0]
    summary = results.summary.assign(model=results.summary["model"].replace({GRADDIFF.name: "GradDiff"}))
    assert spec["data"] == json.loads(tradeoff_figure(summary, x, y).to_json())["data"]
    assert "GradDiff" in {trace["name"] for trace in spec["data"]} | {
        c[0] for t in spec["data"] for c in t["customdata"]
    }
    for trace in spec["data"]:
        if trace["name"] == "Pareto front":
            continue
        points = zip(trace["customdata"], array(trace["x"]), array(trace["y"]), strict=True)
        for (model, _, step), value_x, value_y in points:
            rows = summary[summary["model"].eq(html.unescape(model))]
            rows = rows[rows["step"].isna()] if step == "final" else rows[rows["step"].eq(int(step)).fillna(False)]
            values = dict(zip(rows["metric"], rows["value"], strict=True))
            assert (values[x], values[y]) == (value_x, value_y)


def test_probe_figures_and_token_markup_equal_the_scores(document: str, full_report: Report, pair) -> None:
    requests = [ProbeRequest(p.prompt, p.answer) for p in full_report.probes]
    expected = score(pair, requests)
    specs = figure_specs(document)
    for i, (probe, again) in enumerate(zip(full_report.probes, expected, strict=True)):
        assert [t.delta for t in probe.tokens] == [t.delta for t in again.tokens]
        assert array(specs[chart_index(full_report, f"probe-{i + 1}-token-shift")]["data"][0]["y"]) == [
            t.delta for t in again.tokens
        ]
        block = document[document.index(f'id="probe-{i + 1}"') :]
        deltas = [float(v) for v in re.findall(r'data-delta="([-0-9.e]+)"', block.split('class="probe"')[0])]
        assert deltas == pytest.approx([t.delta for t in again.tokens], abs=1e-6)


def test_attribution_and_layer_views_for_probes_with_answers(full_report: Report, document: str) -> None:
    assert [a.prompt for a in full_report.attributions] == [full_report.probes[0].prompt]
    assert [lens.answer for lens in full_report.lenses] == ["Jane Doe"]
    assert any("no answer given" in warning and "The sky is" in warning for warning in full_report.warnings)
    lens_table = full_report.lens_table().frame
    knowledge = full_report.lenses[0].hidden_knowledge()
    assert lens_table["score"].tolist() == [knowledge[side].score for side in ("base", "unlearned")]
    # the heatmap's rows are the whole answer's attributions over the prompt: base, unlearned, Δ
    heat = figure_specs(document)[chart_index(full_report, "attribution-1")]
    result = full_report.attributions[0]
    assert len(result.delta) == 1  # not per token: one row, so the whole answer's map is that row
    assert [array(trace["z"]) for trace in heat["data"]] == [[result.base[0]], [result.unlearned[0]], [result.delta[0]]]


# ---------------------------------------------------------------------------------------------- tables


def test_metric_table_last_evaluation_and_references(full_report: Report, document: str, results) -> None:
    table = full_report.metrics_table()
    frame, summary = table.frame, results.summary
    references = summary[summary["method"].isin(REFERENCE_METHODS)]["model"].unique()
    assert frame["reference"].tolist() == [True] * len(references) + [False] * (len(frame) - len(references))
    assert document.count('<th class="run reference"') == len(references)  # one column per run, references shaded
    assert sorted(frame["model"]) == sorted(summary["model"].unique())
    graddiff = frame[frame["model"].eq(GRADDIFF.name)].iloc[0]
    assert pd.isna(graddiff["step"])  # the final evaluation, not a checkpoint
    final = summary[summary["model"].eq(GRADDIFF.name) & summary["step"].isna()]
    for metric in frame.columns[4:]:
        stored = final.loc[final["metric"].eq(metric), "value"]
        assert (pd.isna(graddiff[metric]) and stored.empty) or graddiff[metric] == stored.iloc[0]
    x, y = full_report.axes
    assert list(frame.columns[4:6]) == [x, y]


def test_metric_table_picks_the_highest_step_without_a_final() -> None:
    summary = pd.DataFrame(
        {
            "model": ["run"] * 4, "method": ["NPO"] * 4, "step": pd.array([5, 5, 10, 10], dtype="Int64"),
            "split": ["forget"] * 4, "metric": ["a", "b", "a", "b"], "value": [1.0, 2.0, 3.0, 4.0],
            "source": ["f"] * 4,
        }
    )  # fmt: skip
    frame = metric_table(summary, ["a", "b"])
    assert frame[["step", "a", "b"]].values.tolist() == [[10, 3.0, 4.0]]


def test_csv_round_trip(full_report: Report) -> None:
    for table in full_report.tables():
        back = pd.read_csv(io.StringIO(frame_to_csv(table.frame)), keep_default_na=False, na_values=[""])
        assert list(back.columns) == [str(column) for column in table.frame.columns]
        for column in table.frame.columns:
            original = table.frame[column]
            if pd.api.types.is_numeric_dtype(original) and not pd.api.types.is_bool_dtype(original):
                np.testing.assert_array_equal(back[column].to_numpy(float), original.to_numpy(float, na_value=np.nan))
            else:
                expected = ["" if pd.isna(value) else str(value) for value in original]
                assert back[column].fillna("").astype(str).tolist() == expected, (table.name, column)


def test_html_csv_links_hold_the_tables(document: str, full_report: Report) -> None:
    for table in full_report.tables():
        match = re.search(rf'<a download="{re.escape(table.name)}.csv" href="([^"]+)"', document)
        assert match, table.name
        href = html.unescape(match.group(1))
        assert unquote(href.removeprefix("data:text/csv;charset=utf-8,")) == frame_to_csv(table.frame)


# ---------------------------------------------------------------------------------------------- inputs


def test_parse_probes() -> None:
    assert parse_probe("Who is X?|A | B") == ProbeRequest("Who is X?|A", "B")
    assert parse_probe("  The sky is  ") == ProbeRequest("The sky is", None)
    assert parse_probe("Q|") == ProbeRequest("Q", None)
    assert parse_probes("a|b\n\n c \n") == [ProbeRequest("a", "b"), ProbeRequest("c", None)]
    with pytest.raises(UserError, match="no prompt"):
        parse_probe(" |answer")


def test_build_report_refuses_what_it_cannot_do(pair: ModelPair, results) -> None:
    with pytest.raises(UserError, match="nothing to report"):
        build_report(pair)
    with pytest.raises(UserError, match="need a model pair"):
        build_report(None, probes=[ProbeRequest("a", "b")])
    with pytest.raises(UserError, match="not_a_metric"):
        build_report(None, results=results, x_metric="not_a_metric", y_metric="model_utility")


def test_results_only_report_has_no_model_sections(results, tmp_path: Path) -> None:
    report = build_report(None, results=results, notes="just numbers")
    path = report.write(tmp_path / "sub" / "r.html")
    text = path.read_text(encoding="utf-8")
    present = set(re.findall(r'<section id="section-(\w+)"', text))
    assert present == {"summary", "notes", "tradeoffs", "metrics", "appendix"}
    assert not list(path.parent.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_report_with_a_pair_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, unlearned = save_tiny_model_dir(tmp_path / "b", seed=0), save_tiny_model_dir(tmp_path / "u", seed=1)
    out = tmp_path / "report.html"
    argv = [
        "report", "--pair", f"{base},{unlearned}", "--results", str(GRADDIFF), "--oracle", str(ORACLE),
        "--probe", "the capital of france is|paris", "--lens", "--notes", INJECTION, "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    assert INJECTION not in text and html.escape(INJECTION) in text
    present = set(re.findall(r'<section id="section-(\w+)"', text))
    assert {"summary", "notes", "pair", "tradeoffs", "metrics", "probes", "layers"} <= present
    assert str(tmp_path) not in text and str(Path.home()) not in text  # the specs as typed, cut to their names
    assert "<tr><th>base model</th><td>b</td></tr><tr><th>unlearned model</th><td>u</td></tr>" in text
    assert main(["report", "--pair", "only-one", "--probe", "x|y", "--out", str(out)]) == 2
    assert "BASE,UNLEARNED" in capsys.readouterr().err


def test_cli_report_without_inputs_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "--out", str(tmp_path / "r.html")]) == 2
    assert "nothing to report" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- exports


def test_export_without_chromium_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_module, "chromium_path", lambda: None)
    with pytest.raises(UserError, match="needs Chromium"):
        _ExportServer().render({"data": [], "layout": {}}, {"format": "png"})
