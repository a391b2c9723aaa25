"""The report's Checkpoints view (core.present.report.checkpoints) on tiny models: a base, an adapter as a single
model and an unlearning run folder of adapter checkpoints.

Its section must hold the numbers core.analyses.multi computes for the same set (probe_many, lens_across), each run
separately here: the trajectory's points, the base's reference line, the token × model map, the lens map (log10 of the
mean rank), the table's CSV, and the summary's sentence (formatted to 3 decimals from those numbers). Both runs are
the same float32 arithmetic on the same models in the same order, so the values are compared exactly, except where
the report formats them (CSV: pandas prints every digit of a float64, so they read back equal).
Markup in a method's name, a label or the question stays text; local paths are cut to their last component.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from tiny_models import save_tiny_adapter as save_adapter
from tiny_models import save_tiny_model_dir
from tiny_models import save_tiny_run as save_run

from core.analyses.multi import ModelSet, lens_across, probe_many, run_entries, spec_entry
from core.analyses.probe import ProbeRequest
from core.cli import main
from core.common.errors import UserError
from core.models.spec import ModelSpec
from core.present.report.checkpoints import CheckpointsView, checkpoints_view, view_from_page
from core.present.report.model import build_report
from core.present.report.render import SECTIONS

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = {"dtype": "float32", "device": "cpu"}
REQUEST = ProbeRequest("the capital of france is", "paris w1")
MARKUP = "<img src=x onerror=alert(1)>"
FIGURE_SCRIPT = re.compile(r'<script type="application/json" id="figure-(\d+)">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-checkpoints")
    base = save_tiny_model_dir(root / "base")
    return {
        "base": base,
        "target": save_adapter(base, root / "target", seed=1),
        "run": save_run(base, root / "run", [4, 2, 6], "npo"),
        "markup": save_run(base, root / "markup", [3], f"ga{MARKUP}"),
    }


def spec(path: Path | str) -> ModelSpec:
    return ModelSpec(str(path), **OPTIONS)


@pytest.fixture(scope="module")
def models(folders) -> ModelSet:
    entries = [spec_entry(str(folders["target"]), spec("x")), *run_entries(folders["run"], spec("x"))]
    return ModelSet.load(spec(folders["base"]), entries)


def figures(document: str) -> list[dict]:
    return [json.loads(text) for _, text in FIGURE_SCRIPT.findall(document)]


def csv_tables(document: str) -> dict[str, pd.DataFrame]:
    links = re.findall(r'<a download="([^"]+)\.csv" href="data:text/csv;charset=utf-8,([^"]*)"', document)
    return {name: pd.read_csv(io.StringIO(unquote(html.unescape(data)))) for name, data in links}


def test_the_section_holds_what_core_analyses_multi_computes(folders, models):
    want = probe_many(models, REQUEST)
    want_lens = lens_across(models, REQUEST.prompt, REQUEST.answer)
    view = checkpoints_view(models, REQUEST, "demo:target", with_lens=True)
    document = build_report(None, checkpoints=[view]).render_html()
    assert f"<h2>{SECTIONS['checkpoints']}</h2>" in document
    # models: the single adapter (a reference line), then npo@2, npo@4, npo@6 from the run folder, by step
    assert models.labels == [str(folders["target"]), "npo@2", "npo@4", "npo@6"]
    trajectory, tokens, lens = figures(document)
    lines = {trace["name"]: trace for trace in trajectory["data"]}
    assert lines["npo"]["x"] == [2, 4, 6] and lines["npo"]["y"] == want.answer_logprobs()[1:]
    assert lines["base: demo:target"]["y"] == [want.results[0].answer_logprob_base] * 2
    assert lines["target"]["y"] == [want.results[0].answer_logprob_unlearned] * 2  # the path cut to its name
    order = [1, 2, 3, 0]  # runs by step, then single models
    assert tokens["data"][0]["z"] == [[t.delta for t in want.results[i].tokens] for i in order]
    ranks = [want_lens.base_rank, *want_lens.rank[1:]]  # base, then npo's checkpoints by step
    expected = [[math.log10(ranks[c][layer]) for c in range(4)] for layer in range(len(want_lens.layers))]
    # numpy's log10 (the figure) against math's: each within an ulp or two of the exact value, so 1e-15 relative
    np.testing.assert_allclose(lens["data"][0]["z"], expected, rtol=1e-15, atol=0)
    assert lens["data"][0]["y"] == want_lens.layers
    table = csv_tables(document)["checkpoints-1"]
    assert table["model"].tolist() == ["npo@2", "npo@4", "npo@6", "target"]
    assert table["answer_logprob"].tolist() == [want.answer_logprobs()[i] for i in order]
    assert table["delta"].tolist() == [want.results[i].delta for i in order]
    assert table["answer_probability"].tolist() == pytest.approx(
        [math.exp(want.answer_logprobs()[i]) for i in order], rel=1e-15
    )
    token_table = csv_tables(document)["checkpoints-1-tokens"]
    assert token_table.iloc[:, 1:].to_numpy().tolist() == [[t.delta for t in want.results[i].tokens] for i in order]
    last = want.results[3]
    sentence = (
        f"Checkpoints 1: the answer's log-probability is {want.results[0].answer_logprob_base:.3f} under the base "
        f"demo:target; npo at its last checkpoint (step 6) {last.answer_logprob_unlearned:.3f} "
        f"(Δ {last.delta:+.3f}); target {want.results[0].answer_logprob_unlearned:.3f}."
    )
    assert html.escape(sentence) in document
    assert str(folders["base"].parent) not in document  # no local path: the single model is called "target"


def test_markup_in_a_method_a_label_and_the_question_stays_text(folders, models):
    entries = [*run_entries(folders["markup"], spec("x")), spec_entry(str(folders["target"]), spec("x"))]
    marked = ModelSet.load(spec(folders["base"]), entries)
    request = ProbeRequest(f"the capital {MARKUP} of france is", "paris")
    view = checkpoints_view(marked, request, f"base{MARKUP}", with_lens=True)
    report = build_report(None, checkpoints=[view], labels={"base": f"demo:x{MARKUP}"})
    document = report.render_html()
    assert "<img" not in document  # not in the HTML, nor in a figure's JSON (escaped twice there: esc, then JSON)
    assert html.escape(f"ga{MARKUP}@3") in document and html.escape(MARKUP) in document
    trajectory = figures(document)[0]
    assert {trace["name"] for trace in trajectory["data"]} >= {html.escape(f"ga{MARKUP}")}
    assert MARKUP in report.summary().findings[-1]  # plain text in the summary, escaped where it becomes HTML


def test_a_view_without_an_answer_or_with_another_lens_is_refused(models):
    with pytest.raises(UserError, match="needs an answer"):
        checkpoints_view(models, ProbeRequest("the capital of", None), "base")
    probe = probe_many(models, REQUEST)
    other = lens_across(models, "w1 w2", "w3")
    stored = {"probe": probe.to_dict(), "runs": [None, "npo", "npo", "npo"], "steps": [None, 2, 4, 6], "base": "b"}
    with pytest.raises(UserError, match="other models or another question"):
        view_from_page(stored, other.to_dict())
    view = view_from_page(stored, lens_across(models, REQUEST.prompt, REQUEST.answer).to_dict())
    assert view.lens_runs() == ["npo"] and isinstance(view, CheckpointsView)
    with pytest.raises(UserError, match="one run and one step"):
        view_from_page({**stored, "runs": ["npo"]})


def run_report(*argv: str) -> int:
    return main(["report", *argv, "--dtype", "float32", "--device", "cpu"])


def test_cli_checkpoints_view_of_a_run_and_a_model(folders, models, tmp_path, capsys):
    out = tmp_path / "r.html"
    question = f"{REQUEST.prompt}|{REQUEST.answer}"
    assert run_report("--base", str(folders["base"]), "--checkpoints", question, "--run", str(folders["run"]),
                      "--checkpoint-model", str(folders["target"]), "--label", "base=the base", "--out",
                      str(out)) == 0  # fmt: skip
    document = out.read_text(encoding="utf-8")
    want = probe_many(models, REQUEST)
    table = csv_tables(document)["checkpoints-1"]
    assert table["model"].tolist() == ["npo@2", "npo@4", "npo@6", "target"]
    assert table["answer_logprob"].tolist() == [want.answer_logprobs()[i] for i in (1, 2, 3, 0)]
    assert "base: the base" in {t["name"] for t in figures(document)[0]["data"]}
    assert len(figures(document)) == 2  # no --lens: trajectory and token map only
    assert 'id="section-pair"' not in document  # --base alone names the checkpoints' base, not a pair
    errors = {
        "choose the models of --checkpoints": ["--run", str(folders["run"])],
        "give the answer too": ["--checkpoints", "no answer", "--run", str(folders["run"])],
        "needs models": ["--checkpoints", question],
    }
    for message, argv in errors.items():
        assert run_report("--base", str(folders["base"]), *argv, "--out", str(tmp_path / "x.html")) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
