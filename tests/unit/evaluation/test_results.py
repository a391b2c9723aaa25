"""core.evaluation.results (what the Tradeoffs page needs beyond ingest) and core.data.uploads, checked on real and
fixture results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from core.common.errors import UserError
from core.evaluation import results
from core.evaluation.ingest import SUMMARY_COLUMNS, IngestResult, ingest
from core.evaluation.results import Point
from core.present.figures import tradeoffs as figures

REAL = results.EXAMPLE_RESULTS  # real open-unlearning outputs (assets/examples/README.md)
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ingest"
FULL, RETAIN90 = "tofu_Llama-3.2-1B-Instruct_full", "tofu_Llama-3.2-1B-Instruct_retain90"
GRADDIFF = "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"


@pytest.fixture(scope="module")
def real() -> IngestResult:
    return ingest([REAL])


@pytest.fixture(scope="module")
def run_with_oracle() -> IngestResult:
    return ingest([FIXTURES / GRADDIFF], oracle=FIXTURES / RETAIN90)


@pytest.fixture
def uploads_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ULENS_UPLOADS", str(tmp_path / "uploads"))
    return tmp_path / "uploads"


def test_parse_paths_skips_blank_lines_and_expands_home() -> None:
    assert results.parse_paths("  /a/b  \n\n~/c\n") == ["/a/b", str(Path("~/c").expanduser())]


def test_fingerprint_changes_when_a_result_file_changes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "TOFU_SUMMARY.json").write_text('{"model_utility": 0.5}')
    (run / "weights.bin").write_bytes(b"ignored")
    first = results.fingerprint([str(run)])
    assert [Path(entry[0]).name for entry in first] == ["TOFU_SUMMARY.json"]
    os.utime(run / "TOFU_SUMMARY.json", ns=(1, 1))
    assert results.fingerprint([str(run)]) != first
    assert results.fingerprint([str(tmp_path / "missing")]) == ()


def test_our_result_folders_lists_runs_with_result_files(tmp_path: Path) -> None:
    (tmp_path / "demo" / "npo" / "checkpoint-5" / "evals").mkdir(parents=True)
    (tmp_path / "demo" / "npo" / "checkpoint-5" / "evals" / "TOFU_EVAL.json").write_text("{}")
    (tmp_path / "demo" / "target").mkdir(parents=True)  # a model folder without results
    (tmp_path / "evals" / "graddiff").mkdir(parents=True)
    (tmp_path / "evals" / "graddiff" / "TOFU_SUMMARY.json").write_text("{}")
    assert results.our_result_folders(tmp_path) == [tmp_path / "demo" / "npo", tmp_path / "evals" / "graddiff"]
    assert results.our_result_folders(tmp_path / "nothing") == []


def test_metric_options_keep_metrics_with_a_direction_forget_first(real: IngestResult) -> None:
    options = results.metric_options(real.summary)
    assert {"forget_Q_A_Prob", "model_utility", "forget_quality", "privleak", "mia_min_k"} <= set(options)
    assert "forget_Q_A_PARA_Prob" not in options  # no known better direction
    assert "mia_min_k/auc" not in options  # the same number as mia_min_k
    assert "mia_min_k/forget" not in options  # a mean score, not a tradeoff axis
    splits = [results.metrics.describe(name).split for name in options]
    assert splits.index("forget") == 0 and "forget" not in splits[splits.count("forget") :]
    assert results.default_axes(options) == ("forget_Q_A_Prob", "model_utility")


def test_default_axes_fall_back_and_refuse_nothing() -> None:
    assert results.default_axes(["forget_knowmem_ROUGE", "retain_knowmem_ROUGE"]) == (
        "forget_knowmem_ROUGE",
        "retain_knowmem_ROUGE",
    )
    assert results.default_axes(["privleak"]) == ("privleak", "privleak")
    with pytest.raises(UserError, match="no metric"):
        results.default_axes([])


def test_default_axes_pass_over_a_metric_equal_for_every_run(real: IngestResult) -> None:
    """A flat preferred axis (model_utility 0 for every run) gives way to the next preferred metric that varies; one
    that varies is kept; with nothing else, the flat one is still chosen."""
    options = results.metric_options(real.summary)
    assert results.default_axes(options, real.summary) == ("forget_Q_A_Prob", "model_utility")  # both vary here
    flat = real.summary.copy()
    flat.loc[flat["metric"].eq("model_utility") & flat["value"].notna(), "value"] = 0.0
    flat.loc[flat["metric"].eq("forget_Q_A_Prob") & flat["value"].notna(), "value"] = 0.5
    x, y = results.default_axes(options, flat)
    assert x == next(m for m in results.X_PREFERRED if m in options and m != "forget_Q_A_Prob")
    assert y == next(m for m in results.Y_PREFERRED if m in options and m != "model_utility")
    assert flat.loc[flat["metric"].eq(y), "value"].nunique() > 1
    only = flat[flat["metric"].eq("model_utility")]
    assert results.default_axes(["model_utility"], only) == ("model_utility", "model_utility")


def test_has_points_needs_one_run_with_both_values(real: IngestResult) -> None:
    assert results.has_points(real.summary, "forget_Q_A_Prob", "model_utility")
    assert not results.has_points(real.summary, "forget_knowmem_ROUGE", "model_utility")  # MUSE vs TOFU runs
    # forget_quality is stored for the full run only (null for retain90): one point
    assert results.has_points(real.summary, *results.FQ_MU)


def test_point_from_selection_reads_every_trace_of_a_real_figure(run_with_oracle: IngestResult) -> None:
    figure = figures.tradeoff_figure(run_with_oracle.summary, "forget_Q_A_Prob", "model_utility")
    summary = run_with_oracle.summary
    for curve, trace in enumerate(figure.data):
        for index, (x, y) in enumerate(zip(trace.x, trace.y, strict=True)):
            point = results.point_from_selection(figure, [{"curve_number": curve, "point_index": index}])
            rows = summary[summary["model"].eq(point.model)]
            rows = rows[rows["step"].isna()] if point.step is None else rows[rows["step"].eq(point.step)]
            values = dict(zip(rows["metric"], rows["value"], strict=True))
            assert (values["forget_Q_A_Prob"], values["model_utility"]) == (x, y)
            assert point.method == rows["method"].iloc[0]
    assert results.point_from_selection(figure, []) is None
    assert results.point_from_selection(figure, [{"curve_number": 99, "point_index": 0}]) is None


def test_point_from_selection_undoes_the_html_escaping() -> None:
    rows = [("<b>run</b>&co", "NPO", 3, "forget", "forget_Q_A_Prob", 0.2, "s"),
            ("<b>run</b>&co", "NPO", 3, "utility", "model_utility", 0.6, "s")]  # fmt: skip
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"step": "Int64"})
    figure = figures.tradeoff_figure(summary, "forget_Q_A_Prob", "model_utility")
    assert "<b>" not in json.dumps(figure.data[0].customdata)
    picked = results.point_from_selection(figure, [{"curve_number": 0, "point_number": 0}])
    assert picked == Point("<b>run</b>&co", "NPO", 3)


def test_checkpoint_metrics_are_that_checkpoints_rows(run_with_oracle: IngestResult) -> None:
    point = Point(GRADDIFF, "GradDiff", 5)
    table = results.checkpoint_metrics(run_with_oracle.summary, point)
    rows = run_with_oracle.summary[
        run_with_oracle.summary["model"].eq(GRADDIFF) & run_with_oracle.summary["step"].eq(5).fillna(False)
    ]
    assert dict(zip(table["metric"], table["value"], strict=True)) == dict(
        zip(rows["metric"], rows["value"], strict=True)
    )
    directions = dict(zip(table["metric"], table["better"], strict=True))
    assert directions["forget_Q_A_Prob"] == "↓" and directions["model_utility"] == "↑"
    assert directions["privleak"] == "→ 0"
    with pytest.raises(UserError, match="no metrics"):
        results.checkpoint_metrics(run_with_oracle.summary, Point(GRADDIFF, "GradDiff", 10))


def test_truth_ratio_oracles_and_mia_attacks(real: IngestResult, run_with_oracle: IngestResult) -> None:
    full = Point(FULL, "target", None)
    assert results.has_truth_ratios(real, full)
    assert results.truth_ratio_oracles(real, full) == [Point(RETAIN90, "oracle", None)]  # not the MUSE retrain
    assert results.truth_ratio_oracles(real, Point(RETAIN90, "oracle", None)) == []
    expected = ["mia_gradnorm", "mia_loss", "mia_min_k", "mia_min_k_plus_plus", "mia_reference", "mia_zlib"]
    assert results.mia_attacks(real.items, full) == expected
    assert "mia_reference" not in results.mia_attacks(real.items, Point(RETAIN90, "oracle", None))
    assert results.mia_attacks(run_with_oracle.items, Point(GRADDIFF, "GradDiff", 15)) == []


def test_store_result_uploads_is_content_addressed_and_checks_names(uploads_home: Path) -> None:
    files = [("TOFU_SUMMARY.json", b'{"model_utility": 0.5}'), ("TOFU_EVAL.json", b"{}")]
    folder = results.store_result_uploads(files, "my_NPO_run")
    assert folder.name == "my_NPO_run" and folder.parent.parent == uploads_home
    assert (folder / "TOFU_SUMMARY.json").read_bytes() == b'{"model_utility": 0.5}'
    assert results.store_result_uploads(list(reversed(files)), "my_NPO_run") == folder
    assert results.store_result_uploads([("TOFU_EVAL.json", b"[]")], "my_NPO_run") != folder
    with pytest.raises(UserError, match=r"notes\.json: not an open-unlearning result file"):
        results.store_result_uploads([("notes.json", b"{}")], "run")
    with pytest.raises(UserError, match="not allowed"):
        results.store_result_uploads(files, "../escape")
    with pytest.raises(UserError, match=r"several uploaded files are named TOFU_EVAL\.json"):
        results.store_result_uploads([("TOFU_EVAL.json", b"{}"), ("TOFU_EVAL.json", b"[]")], "run")


def test_result_paths_gathers_picked_typed_and_uploaded(uploads_home: Path) -> None:
    upload = [("TOFU_SUMMARY.json", b'{"model_utility": 0.5}')]
    paths = results.result_paths(["/ours/run"], "/a\n\n /b \n", upload, "mine")
    assert paths[:3] == ["/ours/run", "/a", "/b"]
    assert Path(paths[3]).name == "mine" and (Path(paths[3]) / "TOFU_SUMMARY.json").is_file()
    with pytest.raises(UserError, match="name at least one result folder"):
        results.result_paths([], "  \n")


def test_split_bar_metrics_keep_bounded_per_split_metrics(real: IngestResult) -> None:
    names = results.split_bar_metrics(real.summary, Point(FULL, "target", None))
    assert {"forget_Q_A_Prob", "retain_Truth_Ratio", "wf_Q_A_ROUGE", "forget_quality", "mia_min_k"} <= set(names)
    assert "privleak" not in names  # −99 in percent
    assert not [name for name in names if "/" in name]  # mia_*/forget mean scores and mia_*/auc copies
    assert "model_utility" not in names  # not a split of the data
