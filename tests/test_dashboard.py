"""Dashboard pages driven through AppTest: widgets give the numbers core computes directly, mistakes give messages.

Charts are compared with core.figures built from core.ingest on the same folders (trace data parsed from the chart's
spec); tables with core.probe.score. Model pairs are tiny random models saved to disk (unit tier) or the embedded
SmolLM2 (integration tier), loaded through the sidebar as a user would.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from tiny_models import save_tiny_model_dir

from core import figures
from core.data import load_demo_splits
from core.ingest import ingest
from core.models import ModelPair
from core.probe import ProbeRequest, score
from core.results import Point, split_bar_metrics, store_result_uploads
from dashboard import state

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
REAL = ROOT.parent / "shared" / "data" / "real" / "open-unlearning-eval"
FULL, RETAIN90 = "tofu_Llama-3.2-1B-Instruct_full", "tofu_Llama-3.2-1B-Instruct_retain90"
FIXTURES = ROOT / "tests" / "fixtures" / "ingest"
GRADDIFF = "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"
TIMEOUT = 180
SELECT_NOTHING = {"box": [], "lasso": []}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh caches, uploads and cache home per test (st caches are shared by every AppTest in the process)."""
    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("ULENS_UPLOADS", str(tmp_path / "uploads"))
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny_pair_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return save_tiny_model_dir(root / "base", seed=0), save_tiny_model_dir(root / "unlearned", seed=1)


def open_page(page: str) -> AppTest:
    """The app on `page`, without loading the default pair (the demo models may not exist yet)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["autoload"] = False
    at.run()
    if page != "probe":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def text_input(at: AppTest, label: str):
    return next(t for t in at.text_input if t.label == label)


def load_pair(at: AppTest, base: Path | str, unlearned: Path | str) -> None:
    """Type both models into the sidebar and press Load pair, as a user does."""
    text_input(at, "Base model").input(str(base))
    text_input(at, "Unlearned model").input(str(unlearned))
    button(at, "Load pair").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["pair_key"][:2] == (str(base), str(unlearned))


def loaded_pair(at: AppTest) -> ModelPair:
    """The pair the sidebar loaded (st.cache_resource is shared with the test process), for direct core calls."""
    return state.load_pair(*at.session_state["pair_key"])


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts on the page by key, as the spec Streamlit sends to the browser."""
    return {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def same_data(spec: dict, figure) -> bool:
    return spec["data"] == json.loads(figure.to_json())["data"]


def errors(at: AppTest) -> list[str]:
    return [error.value for error in at.error]


def load_results(at: AppTest, paths: str = "", oracle: str = "") -> None:
    next(t for t in at.text_area if t.label.startswith("Result folders")).input(paths)
    text_input(at, "Oracle folder (optional)").input(oracle)
    button(at, "Load results").click().run()
    assert not at.exception


# ---------------------------------------------------------------------------------------------- every page


@pytest.mark.parametrize("page", ["probe", "dataset", "tradeoffs"])
def test_every_page_loads_without_a_pair(page: str) -> None:
    at = open_page(page)
    assert [title.value for title in at.title] == [page.capitalize()]
    assert not errors(at)


# ---------------------------------------------------------------------------------------------- tradeoffs


def test_tradeoffs_example_charts_equal_core_figures() -> None:
    at = open_page("tradeoffs")
    button(at, "Use the example: real open-unlearning outputs").click().run()
    button(at, "Load results").click().run()
    assert not at.exception and not errors(at)
    summary = ingest([REAL]).summary
    drawn = charts(at)
    assert same_data(drawn["tradeoff_chart"], figures.tradeoff_figure(summary, "forget_Q_A_Prob", "model_utility"))
    assert same_data(drawn["tradeoff_fq_mu"], figures.forget_quality_utility_figure(summary))
    at.selectbox(key="tradeoff_x").select("forget_truth_ratio")
    at.selectbox(key="tradeoff_y").select("retain_Q_A_Prob").run()
    redrawn = charts(at)["tradeoff_chart"]
    assert same_data(redrawn, figures.tradeoff_figure(summary, "forget_truth_ratio", "retain_Q_A_Prob"))
    names = [trace["name"] for trace in redrawn["data"]]
    assert names == [f"oracle (retrained without forget set): {RETAIN90}", f"target (before unlearning): {FULL}"]


def test_tradeoffs_click_shows_checkpoint_metrics_truth_ratios_and_mia() -> None:
    at = open_page("tradeoffs")
    load_results(at, str(REAL))
    result = ingest([REAL])
    spec = charts(at)["tradeoff_chart"]
    curve = next(i for i, trace in enumerate(spec["data"]) if trace["name"].endswith(FULL))
    at.session_state["tradeoff_chart"] = {
        "selection": {"points": [{"curve_number": curve, "point_index": 0}], "point_indices": [0], **SELECT_NOTHING}
    }
    at.run()
    assert not at.exception and not errors(at)
    assert [text.value for text in at.text] == [f"{FULL} · final"]
    table = next(df.value for df in at.dataframe if "better" in df.value.columns)  # the checkpoint's metrics
    stored = json.loads((REAL / FULL / "evals_forget10" / "TOFU_SUMMARY.json").read_text())
    shown = dict(zip(table["metric"], table["value"], strict=True))
    assert all(shown[name] == value for name, value in stored.items())
    drawn = charts(at)
    bars = figures.split_bars_figure(
        result.summary, FULL, metric_names=split_bar_metrics(result.summary, Point(FULL, "target", None))
    )
    assert same_data(drawn["tradeoff_splits"], bars)
    assert same_data(drawn["tradeoff_truth_ratio"], figures.truth_ratio_figure(result.items, FULL, RETAIN90))
    assert at.selectbox(key="tradeoff_attack").value == "mia_min_k"
    assert same_data(drawn["tradeoff_mia"], figures.mia_figure(result.items, FULL, "mia_min_k"))
    at.selectbox(key="tradeoff_attack").select("mia_zlib").run()
    assert same_data(charts(at)["tradeoff_mia"], figures.mia_figure(result.items, FULL, "mia_zlib"))


def test_tradeoffs_run_with_oracle_pareto_front_and_warnings() -> None:
    at = open_page("tradeoffs")
    load_results(at, str(FIXTURES / GRADDIFF), str(FIXTURES / RETAIN90))
    result = ingest([FIXTURES / GRADDIFF], oracle=FIXTURES / RETAIN90)
    drawn = charts(at)
    assert same_data(
        drawn["tradeoff_chart"], figures.tradeoff_figure(result.summary, "forget_Q_A_Prob", "model_utility")
    )
    assert "Pareto front" in [trace["name"] for trace in drawn["tradeoff_chart"]["data"]]
    assert same_data(drawn["tradeoff_fq_mu"], figures.forget_quality_utility_figure(result.summary))
    assert at.warning[0].value.startswith(f"{len(result.warnings)} problem(s) while reading")
    shown = next(df.value for df in at.dataframe if "message" in df.value.columns)
    assert shown.to_dict("records") == [asdict(warning) for warning in result.warnings]
    assert any(message.startswith("checkpoint has no evaluation files") for message in shown["message"])


def test_tradeoffs_upload_is_read_like_a_folder() -> None:
    files = [
        (name, (REAL / FULL / "evals_forget10" / name).read_bytes()) for name in ("TOFU_EVAL.json", "TOFU_SUMMARY.json")
    ]
    at = open_page("tradeoffs")
    at.file_uploader[0].set_value([(name, content, "application/json") for name, content in files])
    text_input(at, "Run name for the uploaded files").input("mine_SimNPO")
    load_results(at, oracle=str(REAL / RETAIN90))
    assert not errors(at)
    result = ingest([store_result_uploads(files, "mine_SimNPO")], oracle=REAL / RETAIN90)
    spec = charts(at)["tradeoff_chart"]
    assert same_data(spec, figures.tradeoff_figure(result.summary, "forget_Q_A_Prob", "model_utility"))
    stored = json.loads(files[1][1])
    run = figures.tradeoff_points(result.summary, "forget_Q_A_Prob", "model_utility")
    run = run[run["model"] == "mine_SimNPO"]
    assert (run["method"].item(), run["x"].item(), run["y"].item()) == (
        "SimNPO",
        stored["forget_Q_A_Prob"],
        stored["model_utility"],
    )


@pytest.mark.parametrize(
    ("paths", "message"),
    [("/no/such/folder", "/no/such/folder: no such file or folder"), ("", "name at least one result folder")],
)
def test_tradeoffs_bad_folder_is_a_message(paths: str, message: str) -> None:
    at = open_page("tradeoffs")
    load_results(at, paths)
    assert any(message in text for text in errors(at)), errors(at)
    assert not at.get("plotly_chart")


def test_tradeoffs_folder_without_results_and_bad_upload_are_messages(tmp_path: Path) -> None:
    at = open_page("tradeoffs")
    load_results(at, str(tmp_path))
    assert any("no result files found" in text for text in errors(at))
    at.file_uploader[0].set_value(("notes.json", b"{}", "application/json"))
    load_results(at, "")
    assert any("notes.json: not an open-unlearning result file" in text for text in errors(at))


# ---------------------------------------------------------------------------------------------- dataset


def write_items(path: Path) -> Path:
    items = [
        {"index": 3, "question": "the capital of france is", "answer": "paris", "perturbed_answer": ["w1", "w2 w3"]},
        {"index": 4, "question": "w4 w5 of", "answer": "the capital w6"},
        {"index": 5, "question": "is w7 france", "answer": "w8 w9", "paraphrased_answer": "w9 w8",
         "perturbed_answer": ["paris w1"]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(item) for item in items))
    return path


def test_dataset_demo_set_without_a_pair_cannot_score() -> None:
    at = open_page("dataset")
    forget = load_demo_splits().forget
    assert at.caption[0].value.startswith(f"{len(forget)} items; {len(forget)} with perturbed answers")
    assert any("Load a model pair" in info.value for info in at.info)
    assert button(at, "Compute per-item metrics").disabled
    at.selectbox(key="dataset_demo_split").select("world_facts").run()
    assert at.caption[0].value.startswith(f"{len(load_demo_splits().world_facts)} items;")


def test_dataset_table_equals_probe_scores_and_opens_in_probe(
    tmp_path: Path, tiny_pair_dirs: tuple[Path, Path]
) -> None:
    at = open_page("dataset")
    load_pair(at, *tiny_pair_dirs)
    at.radio(key="dataset_source").set_value("File path").run()
    text_input(at, "File path").input(str(write_items(tmp_path / "forget.jsonl"))).run()
    button(at, "Compute per-item metrics").click().run()
    assert not at.exception and not errors(at)
    table = next(df for df in at.dataframe if df.key == "dataset_table").value
    pair = loaded_pair(at)
    items = read_questions(tmp_path / "forget.jsonl")
    for row, (question, answer) in zip(table.itertuples(index=False), items, strict=True):
        direct = score(pair, [ProbeRequest(question, answer)], chat=True)[0]
        assert row.delta == pytest.approx(direct.delta, abs=1e-5)
        assert row.prob_base == pytest.approx(math.exp(np.mean([t.logprob_base for t in direct.tokens])), rel=1e-5)
    assert table["truth_ratio_base"].isna().tolist() == [False, True, False]

    text_input(at, "Filter: question or answer contains").input("france").run()
    filtered = next(df for df in at.dataframe if df.key == "dataset_table").value
    assert filtered["index"].tolist() == [3, 5]
    at.session_state["dataset_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    button(at, "Open in Probe").click().run()
    assert not at.exception
    assert [title.value for title in at.title] == ["Probe"]
    assert at.text_area(key="probe_prompt").value == "is w7 france"
    assert at.text_input(key="probe_answer").value == "w8 w9"


def read_questions(path: Path) -> list[tuple[str, str]]:
    return [(record["question"], record["answer"]) for record in map(json.loads, path.read_text().splitlines())]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "forget.jsonl",
            b'{"question": "q", "answer": "a"}\n{"question": "q2"}\n',
            "forget.jsonl:2: missing field 'answer'",
        ),
        ("retain.csv", b"question,reply\nWho?,Bo\n", "retain.csv, row 1: missing field 'answer'"),
        ("broken.json", b"[{", "broken.json:1: not valid JSON"),
    ],
)
def test_dataset_bad_upload_is_a_message(name: str, content: bytes, message: str) -> None:
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value("Upload").run()
    at.file_uploader(key="dataset_upload").set_value((name, content, "application/octet-stream")).run()
    assert not at.exception
    assert any(message in text for text in errors(at)), errors(at)


def test_dataset_missing_path_is_a_message() -> None:
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value("File path").run()
    text_input(at, "File path").input("/no/such/forget.jsonl").run()
    assert not at.exception
    assert errors(at) == ["/no/such/forget.jsonl: no such file or folder"]


# ---------------------------------------------------------------------------------------------- probe


def test_probe_example_fills_prompt_and_scores_like_core(tiny_pair_dirs: tuple[Path, Path]) -> None:
    at = open_page("probe")
    load_pair(at, *tiny_pair_dirs)
    demo = load_demo_splits()
    picker = at.selectbox(key="probe_example")
    assert len(picker.options) == len(demo.forget) + len(demo.retain)
    first = demo.retain.items[0]
    picker.set_value(len(demo.forget)).run()  # the first retain item
    assert at.text_area(key="probe_prompt").value == first.question
    assert at.text_input(key="probe_answer").value == first.answer
    button(at, "Score").click().run()
    assert not at.exception and not errors(at)
    direct = score(loaded_pair(at), [ProbeRequest(first.question, first.answer)], chat=True)[0]
    assert at.metric[0].value == f"{direct.delta:+.3f}"


def test_probe_takes_a_handover_and_keeps_it_without_a_pair() -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["autoload"] = False
    at.session_state["probe_handover"] = {"prompt": "Where was Ana born?", "answer": "Lima"}
    at.run()
    assert any("Load a model pair" in info.value for info in at.info)
    assert at.session_state["probe_prompt"] == "Where was Ana born?"
    assert "probe_handover" not in at.session_state


# ---------------------------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_dataset_scores_demo_forget_items_with_the_embedded_model(embedded_model_dir: Path) -> None:
    at = open_page("dataset")
    load_pair(at, embedded_model_dir, embedded_model_dir)
    at.number_input(key="dataset_limit").set_value(2)
    button(at, "Compute per-item metrics").click().run()
    assert not at.exception and not errors(at)
    table = next(df for df in at.dataframe if df.key == "dataset_table").value
    forget = load_demo_splits().forget.items[:2]
    direct = score(loaded_pair(at), [ProbeRequest(item.question, item.answer) for item in forget], chat=True)
    assert table["delta"].tolist() == [0.0, 0.0]  # one model on both sides: exactly no shift
    expected = [math.exp(np.mean([t.logprob_base for t in result.tokens])) for result in direct]
    assert table["prob_base"].tolist() == pytest.approx(expected, rel=1e-4)
    assert table["truth_ratio_base"].notna().all()
