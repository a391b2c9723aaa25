"""Reading real open-unlearning / legacy TOFU files and hand-written layout fixtures into tidy tables."""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core.cli.ingest import add_parser as add_ingest_parser
from core.cli.ingest import ingest_main, run_ingest
from core.common.errors import UserError
from core.evaluation import ingest as ingest_module
from core.evaluation.ingest import (
    IngestResult,
    forget_truth_ratios,
    infer_method,
    infer_run,
    ingest,
    read_jsonl_or_lines,
    read_records,
    write_open_unlearning,
)
from core.evaluation.results import EXAMPLE_RESULTS

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"  # TOFU data and legacy logs (README there)
EXAMPLES = EXAMPLE_RESULTS.parent  # open-unlearning outputs, the app's example results (assets/examples/README.md)
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ingest"
OU = "open-unlearning-eval"
FULL = f"{OU}/tofu_Llama-3.2-1B-Instruct_full"
RETAIN90 = f"{OU}/tofu_Llama-3.2-1B-Instruct_retain90"
OU_EVALS = [
    f"{FULL}/evals_forget10/TOFU_EVAL.json",
    f"{RETAIN90}/TOFU_EVAL.json",
    f"{OU}/muse_Llama-2-7b-hf_News_target/MUSE_EVAL.json",
    f"{OU}/muse_Llama-2-7b-hf_News_retrain/MUSE_EVAL.json",
]
LEGACY_FULL = "tofu-legacy-eval/eval_llama2-7b_full_wd0.01"
LEGACY_RETAIN90 = "tofu-legacy-eval/eval_llama2-7b_retain90_wd0.01"
DATASET_SIZES = {  # from tests/fixtures/real/README.md
    "forget01_perturbed.json": 40,
    "forget10_perturbed.json": 400,
    "retain_perturbed.json": 400,
    "holdout01.json": 40,
    "real_authors_perturbed.json": 100,
    "world_facts_perturbed.json": 117,
    "idontknow.jsonl": 100,
}
RUN = FIXTURES / "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"
ORACLE = FIXTURES / "tofu_Llama-3.2-1B-Instruct_retain90"
LEGACY = FIXTURES / "legacy/grad_ascent_1e-05_forget10_5/checkpoint-25/eval_results/ds_size300"


@pytest.fixture(scope="module")
def real() -> Path:
    return REAL


@pytest.fixture(scope="module")
def real_result(real: Path) -> IngestResult:
    return ingest([real, EXAMPLE_RESULTS])


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def stored_numbers(entry: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    """(metric path, value) for every agg_value and plain number of an EVAL entry, as the reader should name them."""
    for key, value in entry.items():
        if key == "agg_value":
            yield path, value
        elif isinstance(value, dict) and key != "value_by_index":
            yield from stored_numbers(value, f"{path}/{key}")
        elif key != "value_by_index":
            yield f"{path}/{key}", value


def stored_items(entry: dict[str, Any], path: str) -> Iterator[tuple[str, str, str, int | None, Any]]:
    """(metric, field, index, option, value) for every per-item value of an EVAL entry."""
    for key, value in entry.items():
        if key == "value_by_index":
            for index, record in value.items():
                for name, cell in record.items():
                    cells = enumerate(cell) if isinstance(cell, list) else [(None, cell)]
                    for option, element in cells:
                        yield path, name, index, option, element
        elif isinstance(value, dict):
            yield from stored_items(value, f"{path}/{key}")


def lookup(frame: pd.DataFrame, **where: Any) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        mask &= frame[column].isna() if value is None else frame[column].eq(value).fillna(False)
    return frame[mask]


def single_value(frame: pd.DataFrame, **where: Any) -> float:
    rows = lookup(frame, **where)
    assert len(rows) == 1, f"expected one row for {where}, got {len(rows)}"
    return float(rows["value"].iloc[0])


def same(value: float, stored: Any) -> bool:
    return math.isnan(value) if stored is None else value == float(stored)


# ------------------------------------------------------------------------------------------ every real file


def test_every_real_file_is_read(real: Path, real_result: IngestResult) -> None:
    every_file = {path for root in (real, EXAMPLE_RESULTS) for path in root.rglob("*") if path.is_file()}
    datasets = set((real / "tofu-dataset").iterdir())
    provenance = {real / "README.md", real / "LICENSE"}
    assert {Path(name) for name in real_result.files} | datasets | provenance == every_file
    assert not real_result.warnings
    for path in datasets:
        records = read_records(path)
        assert len(records) == DATASET_SIZES[path.name], path.name
        if path.name != "idontknow.jsonl":
            assert all({"question", "answer"} <= set(record) for record in records)


@pytest.mark.parametrize("relative", OU_EVALS)
def test_open_unlearning_eval_numbers_equal_stored(real: Path, relative: str) -> None:
    path = EXAMPLES / relative
    result = ingest([path])
    data = load(path)
    expected = [pair for name, entry in data.items() for pair in stored_numbers(entry, name)]
    assert len(result.summary) == len(expected)
    for metric, value in expected:
        assert same(single_value(result.summary, metric=metric), value), metric
    numeric = [row for name, entry in data.items() for row in stored_items(entry, name) if not isinstance(row[4], str)]
    texts = [row for name, entry in data.items() for row in stored_items(entry, name) if isinstance(row[4], str)]
    assert len(result.items) == len(numeric) and len(result.texts) == len(texts)
    frame = result.items.set_index(["metric", "field", "index", "option"])["value"]
    stored = pd.Series(
        [np.nan if v is None else float(v) for *_, v in numeric],
        index=pd.MultiIndex.from_tuples([row[:4] for row in numeric], names=frame.index.names),
    )
    pd.testing.assert_series_equal(frame.sort_index(), stored.sort_index(), check_names=False, check_index_type=False)
    assert sorted(result.texts["text"]) == sorted(row[4] for row in texts)


@pytest.mark.parametrize("relative", [path.replace("EVAL", "SUMMARY") for path in OU_EVALS])
def test_summary_files_equal_stored_alone_and_beside_their_eval(real: Path, relative: str) -> None:
    stored = load(EXAMPLES / relative)
    alone = ingest([EXAMPLES / relative]).summary
    together = ingest([(EXAMPLES / relative).parent]).summary
    assert len(alone) == len(stored)
    for metric, value in stored.items():
        assert single_value(alone, metric=metric) == value
        assert single_value(together, metric=metric) == value  # merged with the EVAL row, not duplicated


def test_real_runs_inferred_from_folder_names(real_result: IngestResult) -> None:
    runs = {(row.model, row.method) for row in real_result.runs().itertuples()}
    assert runs == {
        ("tofu_Llama-3.2-1B-Instruct_full", "target"),
        ("tofu_Llama-3.2-1B-Instruct_retain90", "oracle"),
        ("muse_Llama-2-7b-hf_News_target", "target"),
        ("muse_Llama-2-7b-hf_News_retrain", "oracle"),
        ("eval_llama2-7b_full_wd0.01", "target"),
        ("eval_llama2-7b_retain90_wd0.01", "oracle"),
    }
    assert real_result.summary["step"].isna().all()


def legacy_tofu_stats(logs: dict[str, Any]) -> dict[str, float]:
    """TOFU's aggregate_eval_stat.py, restated: per-split Prob / ROUGE / Truth Ratio and the model utility."""
    prefixes = {"eval_log.json": "retain", "eval_log_forget.json": "forget"}
    prefixes |= {"eval_real_author_wo_options.json": "ra", "eval_real_world_wo_options.json": "wf"}
    out = {}
    for name, prefix in prefixes.items():
        log = logs[name]
        gt = np.array(list(log["avg_gt_loss"].values()))
        perturbed = np.array(list(log["average_perturb_loss"].values()))
        paraphrased = np.array(list(log["avg_paraphrased_loss"].values()))
        ratio = np.exp(perturbed.mean(-1) - paraphrased)  # legacy orientation: paraphrased over perturbed
        out[f"{prefix}_Q_A_ROUGE"] = np.mean(list(log["rougeL_recall"].values()))
        if "eval_log" in name:
            out[f"{prefix}_Q_A_Prob"] = np.mean(np.exp(-gt))
        else:
            true, false = np.exp(-gt), np.exp(-perturbed)
            out[f"{prefix}_Q_A_Prob_normalised"] = np.mean(true / (true + false.sum(-1)))
        if prefix == "forget":
            out["forget_truth_ratio"] = np.mean(np.minimum(ratio, 1 / ratio))
        else:
            out[f"{prefix}_Truth_Ratio"] = np.mean(np.maximum(0, 1 - 1 / ratio))
    out["model_utility"] = stats.hmean([value for key, value in out.items() if not key.startswith("forget")])
    return out


@pytest.mark.parametrize("relative", [LEGACY_FULL, LEGACY_RETAIN90])
def test_legacy_logs_items_equal_stored_and_aggregates_follow_tofu(real: Path, relative: str) -> None:
    result = ingest([real / relative])
    logs = load(real / relative / "eval_log_aggregated.json")
    numbers, texts = [], []
    for file_name, log in logs.items():
        for stat, column in log.items():
            for index, cell in column.items():
                cells = enumerate(cell) if isinstance(cell, list) else [(pd.NA, cell)]
                for option, value in cells:
                    row = (file_name.removesuffix(".json"), stat, index, option)
                    (texts if isinstance(value, str) else numbers).append((*row, value))
    expected = pd.DataFrame(numbers, columns=["metric", "field", "index", "option", "value"]).astype(
        {"option": "Int64"}
    )
    got = result.items[expected.columns]  # the standalone eval_log_forget.json copy is not read twice
    key = ["metric", "field", "index", "option"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    assert sorted(result.texts["text"]) == sorted(row[-1] for row in texts)
    for metric, value in legacy_tofu_stats(logs).items():
        assert single_value(result.summary, metric=metric) == pytest.approx(value, rel=1e-12), metric


# ------------------------------------------------------------------------------------------ forget quality


def test_forget_quality_recomputed_from_full_vs_retain90_equals_stored(real: Path, tmp_path: Path) -> None:
    stored = load(EXAMPLES / FULL / "evals_forget10/TOFU_EVAL.json")
    expected = stored["forget_quality"]["agg_value"]
    stored["forget_quality"]["agg_value"] = None  # as a run evaluated without retain logs would have it
    run = tmp_path / "tofu_Llama-3.2-1B-Instruct_full" / "evals"
    run.mkdir(parents=True)
    (run / "TOFU_EVAL.json").write_text(json.dumps(stored))
    result = ingest([run], oracle=EXAMPLES / RETAIN90)
    assert single_value(result.summary, model="tofu_Llama-3.2-1B-Instruct_full", metric="forget_quality") == (
        pytest.approx(expected, rel=1e-9)
    )
    assert math.isnan(single_value(result.summary, method="oracle", metric="forget_quality"))
    assert not result.warnings


def test_stored_forget_quality_is_kept_when_an_oracle_is_given(real: Path) -> None:
    result = ingest([EXAMPLES / FULL], oracle=EXAMPLES / RETAIN90)
    row = lookup(result.summary, model="tofu_Llama-3.2-1B-Instruct_full", metric="forget_quality")
    assert row["value"].tolist() == [load(EXAMPLES / FULL / "evals_forget10/TOFU_SUMMARY.json")["forget_quality"]]
    assert row["source"].iloc[0].endswith("TOFU_EVAL.json")


def test_legacy_forget_quality_from_oracle_matches_tofu_definition(real: Path) -> None:
    def legacy_ratios(relative: str) -> np.ndarray:
        log = load(real / relative / "eval_log_aggregated.json")["eval_log_forget.json"]
        perturbed = np.array(list(log["average_perturb_loss"].values())).mean(-1)
        return np.exp(perturbed - np.array(list(log["avg_paraphrased_loss"].values())))

    expected = stats.ks_2samp(legacy_ratios(LEGACY_FULL), legacy_ratios(LEGACY_RETAIN90)).pvalue
    result = ingest([real / LEGACY_FULL], oracle=real / LEGACY_RETAIN90)
    assert single_value(result.summary, method="target", metric="forget_quality") == pytest.approx(expected, rel=1e-9)


def test_oracle_fills_forget_quality_for_each_checkpoint() -> None:
    result = ingest([RUN], oracle=ORACLE)
    oracle = [
        item["score"] for item in load(ORACLE / "TOFU_EVAL.json")["forget_truth_ratio"]["value_by_index"].values()
    ]
    for step, folder in ((5, RUN / "checkpoint-5/evals"), (None, RUN / "evals")):
        ratios = [v["score"] for v in load(folder / "TOFU_EVAL.json")["forget_truth_ratio"]["value_by_index"].values()]
        value = single_value(result.summary, method="GradDiff", step=step, metric="forget_quality")
        assert value == pytest.approx(stats.ks_2samp(ratios, oracle).pvalue, rel=1e-12)
        np.testing.assert_array_equal(forget_truth_ratios(result.items, RUN.name, step), ratios)
    assert lookup(result.summary, step=15, metric="forget_quality").empty
    assert any("checkpoint-15" in w.path and "forget quality not computed" in w.message for w in result.warnings)
    assert set(lookup(result.summary, model=ORACLE.name)["method"]) == {"oracle"}


def test_forget_quality_refuses_forget_sets_of_different_size(real: Path) -> None:
    result = ingest([RUN / "evals"], oracle=EXAMPLES / RETAIN90)
    assert lookup(result.summary, model=RUN.name, metric="forget_quality")["value"].isna().all()
    assert any("4 forget items vs the oracle's 400" in w.message for w in result.warnings)


def test_oracle_without_truth_ratios_is_a_user_error(real: Path) -> None:
    with pytest.raises(UserError, match="no per-item forget truth ratios"):
        ingest([RUN], oracle=EXAMPLES / f"{OU}/muse_Llama-2-7b-hf_News_retrain")


# ------------------------------------------------------------------------------------------ layout fixtures


def test_training_curve_steps_from_checkpoint_folders() -> None:
    result = ingest([RUN])
    run = lookup(result.summary, model=RUN.name)
    assert set(run["method"]) == {"GradDiff"}
    assert sorted(run["step"].dropna().unique().tolist()) == [5, 15] and run["step"].isna().any()
    for step, folder in ((5, "checkpoint-5/evals"), (15, "checkpoint-15/evals"), (None, "evals")):
        for metric, value in load(RUN / folder / "TOFU_SUMMARY.json").items():
            assert single_value(run, step=step, metric=metric) == value
    missing = [w for w in result.warnings if w.path.endswith("checkpoint-10")]
    assert len(missing) == 1 and "no evaluation files" in missing[0].message
    steps = result.summary["step"].tolist()
    assert steps.index(5) < steps.index(15) < max(i for i, s in enumerate(steps) if s is pd.NA)


def test_lm_eval_summary_is_read_and_non_numbers_kept_as_text() -> None:
    stored = load(RUN / "evals/LMEval_SUMMARY.json")
    result = ingest([RUN / "evals/LMEval_SUMMARY.json"])
    assert single_value(result.summary, metric="mmlu/acc", split="mmlu") == stored["mmlu/acc"]
    assert single_value(result.summary, metric="wmdp_cyber/acc") == stored["wmdp_cyber/acc"]
    assert lookup(result.texts, metric="mmlu/acc_stderr")["text"].tolist() == ["N/A"]
    assert [w.message for w in result.warnings] == ["mmlu/acc_stderr: 'N/A' is not a number (kept as text)"]


def test_overrides_apply_to_every_run() -> None:
    result = ingest([RUN], model="mine", method="NPO", step=3)
    assert set(result.summary["model"]) == {"mine"} and set(result.summary["method"]) == {"NPO"}
    assert set(result.summary["step"]) == {3} and set(result.items["step"]) == {3}


def test_malformed_json_is_a_warning_with_file_and_line_and_the_rest_loads() -> None:
    broken = FIXTURES / "broken_run/evals/TOFU_SUMMARY.json"
    with pytest.raises(json.JSONDecodeError) as error:
        json.loads(broken.read_text())
    result = ingest([FIXTURES / "broken_run", RUN])
    [warning] = [w for w in result.warnings if w.path == str(broken)]
    assert warning.line == error.value.lineno == 3
    assert str(warning).startswith(f"{broken}:3: invalid JSON")
    for metric, value in load(FIXTURES / "broken_run/evals/MUSE_SUMMARY.json").items():
        assert single_value(result.summary, model="broken_run", metric=metric) == value
    assert not lookup(result.summary, model=RUN.name).empty


def test_legacy_csv_values_win_and_agree_with_the_logs() -> None:
    result = ingest([FIXTURES / "legacy"])
    with (LEGACY / "aggregate_stat.csv").open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert set(result.summary["method"]) == {row["Method"]} and set(result.summary["step"]) == {25}
    names = {"ROUGE Retain": "retain_Q_A_ROUGE", "Prob. Real World": "wf_Q_A_Prob_normalised"}
    names |= {"Truth Ratio Forget": "forget_truth_ratio", "Model Utility": "model_utility"}
    names |= {"Forget Quality": "forget_quality", "Prob. Forget": "forget_Q_A_Prob"}
    for column, metric in names.items():
        assert single_value(result.summary, metric=metric) == float(row[column])
        assert lookup(result.summary, metric=metric)["source"].iloc[0] == str(LEGACY / "aggregate_stat.csv")
    assert lookup(result.texts, metric="Submitted By")["text"].tolist() == [row["Submitted By"]]
    assert not result.warnings  # the aggregates computed from the JSON logs agree with the CSV


def test_legacy_csv_disagreeing_with_the_logs_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-25"
    shutil.copytree(LEGACY, folder)
    with (folder / "aggregate_stat.csv").open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    row["ROUGE Retain"] = "0.99"
    with (folder / "aggregate_stat.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, row.keys())
        writer.writeheader()
        writer.writerow(row)
    result = ingest([folder])
    assert single_value(result.summary, metric="retain_Q_A_ROUGE") == 0.99
    assert [w.message.split(" = ")[0] for w in result.warnings] == ["retain_Q_A_ROUGE"]


def test_unknown_and_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        ingest([tmp_path / "nope"])
    with pytest.raises(UserError, match="no result files"):
        ingest([tmp_path])
    other = tmp_path / "notes.json"
    other.write_text("{}")
    assert "not a known result file" in ingest([other]).warnings[0].message


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("tofu_Llama-3.2-1B-Instruct_forget10_GradDiff", "GradDiff"),
        ("tofu_Llama-3.2-1B-Instruct_forget10_SimNPO", "SimNPO"),
        ("tofu_Llama-3.2-1B-Instruct_forget10_NPO_lr1e-5", "NPO"),
        ("grad_ascent_1e-05_forget10_5", "GradAscent"),
        ("muse_Llama-2-7b-hf_News_target", "target"),
        ("tofu_Llama-3.2-1B-Instruct_full", "target"),
        ("muse_Llama-2-7b-hf_News_retrain", "oracle"),
        ("eval_llama2-7b_retain90_wd0.01", "oracle"),
        ("my_experiment", "my_experiment"),
    ],
)
def test_infer_method(name: str, method: str) -> None:
    assert infer_method(name) == method


def test_infer_run_skips_wrapper_folders() -> None:
    run = infer_run(Path("/x/saves/unlearn/run_GradDiff/checkpoint-40/evals"))
    assert (run.model, run.method, run.step) == ("run_GradDiff", "GradDiff", 40)
    legacy = infer_run(Path("/x/grad_diff_1e-05_forget05_5/checkpoint-12/eval_results/ds_size300"))
    assert (legacy.model, legacy.method, legacy.step) == ("grad_diff_1e-05_forget05_5", "GradDiff", 12)


# ------------------------------------------------------------------------------------------ plain readers


def test_jsonl_or_lines(real: Path, tmp_path: Path) -> None:
    idk = real / "tofu-dataset/idontknow.jsonl"
    assert read_jsonl_or_lines(idk) == [line.strip() for line in idk.read_text().splitlines() if line.strip()]
    assert read_jsonl_or_lines(FIXTURES / "idontknow.jsonl") == ["I'm not sure.", "{not json} but text", "No idea."]
    assert read_jsonl_or_lines(FIXTURES / "records.jsonl") == [
        {"question": "q1", "answer": "a1"},
        {"question": "q2", "answer": "a2"},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2"):
        read_jsonl_or_lines(bad)


# ------------------------------------------------------------------------------------------ round trips


def test_ingest_result_json_round_trip(real_result: IngestResult, tmp_path: Path) -> None:
    result = ingest([FIXTURES / "broken_run", RUN], oracle=ORACLE)
    for original in (real_result, result):
        again = IngestResult.from_json(original.to_json())
        for name in ("summary", "items", "texts"):
            pd.testing.assert_frame_equal(getattr(again, name), getattr(original, name))
        assert again.warnings == original.warnings and again.files == original.files
    result.save(tmp_path / "result.json")
    pd.testing.assert_frame_equal(IngestResult.load(tmp_path / "result.json").to_frame(), result.to_frame())
    (tmp_path / "bad.json").write_text("{\n oops")
    with pytest.raises(UserError, match=r"bad\.json:2"):
        IngestResult.load(tmp_path / "bad.json")


@pytest.mark.parametrize("relative", OU_EVALS)
def test_writer_reproduces_real_files_from_their_ingested_rows(real: Path, relative: str, tmp_path: Path) -> None:
    original = EXAMPLES / relative
    benchmark = original.name.split("_")[0]
    stored_summary = load(original.with_name(f"{benchmark}_SUMMARY.json"))
    eval_path, summary_path = write_open_unlearning(ingest([original]), tmp_path, benchmark, stored_summary)
    assert load(eval_path) == load(original)
    assert load(summary_path) == stored_summary
    again = ingest([eval_path])
    pd.testing.assert_frame_equal(
        again.items.drop(columns=["model", "method", "source"]),
        ingest([original]).items.drop(columns=["model", "method", "source"]),
    )


def test_writer_round_trip_from_a_mapping(tmp_path: Path) -> None:
    results = {
        "forget_truth_ratio": {
            "agg_value": np.float64(0.4),
            "value_by_index": {0: {"score": 0.5}, 1: {"score": np.float32(2.0)}},
        },
        "forget_Q_A_PERT_Prob": {"agg_value": 0.2, "value_by_index": {"0": {"avg_loss": np.array([1.0, 2.0])}}},
        "model_utility": 0.61,
        "forget_quality": None,
        "privleak": float("nan"),
    }
    out = tmp_path / "run_NPO" / "evals"
    eval_path, summary_path = write_open_unlearning(results, out)
    assert eval_path == out / "TOFU_EVAL.json" and summary_path == out / "TOFU_SUMMARY.json"
    assert load(summary_path) == {"forget_Q_A_PERT_Prob": 0.2, "forget_truth_ratio": 0.4, "model_utility": 0.61}
    result = ingest([out])
    assert single_value(result.summary, metric="forget_truth_ratio", source=str(eval_path)) == 0.4
    assert single_value(result.summary, metric="model_utility") == 0.61
    assert math.isnan(single_value(result.summary, metric="forget_quality"))
    assert single_value(result.items, metric="forget_truth_ratio", index="1") == 2.0
    assert lookup(result.items, metric="forget_Q_A_PERT_Prob", field="avg_loss")["value"].tolist() == [1.0, 2.0]
    assert set(result.summary["method"]) == {"NPO"}


def test_writer_refuses_several_evaluations_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="one evaluation"):
        write_open_unlearning(ingest([RUN]), tmp_path)
    with pytest.raises(UserError, match="benchmark name"):
        write_open_unlearning({"x": 1.0}, tmp_path, benchmark="../evil")


# ------------------------------------------------------------------------------------------ CLI


def test_cli_prints_the_summary_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert ingest_main([str(RUN / "checkpoint-5")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "method", "step", "split", "metric", "value"]
    stored = load(RUN / "checkpoint-5/evals/TOFU_SUMMARY.json")
    row = next(line.split() for line in lines if line.split()[4] == "model_utility")
    assert float(row[5]) == pytest.approx(stored["model_utility"])


def test_cli_json_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    assert ingest_main([str(RUN), "--oracle", str(ORACLE), "--json"]) == 0
    printed = IngestResult.from_json(capsys.readouterr().out)
    expected = ingest([RUN], oracle=ORACLE)
    pd.testing.assert_frame_equal(printed.summary, expected.summary)
    assert printed.warnings == expected.warnings


def test_cli_errors_and_registration(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert ingest_main([str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ingest", str(RUN), "--method", "NPO", "--step", "7"])
    assert args.handler is run_ingest and args.method == "NPO" and args.step == 7
    assert run_ingest(args) == 0
    assert ingest_module.SUMMARY_COLUMNS[-1] == "source"
