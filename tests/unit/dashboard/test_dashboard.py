"""Dashboard pages driven through AppTest: widgets give the numbers core computes directly, mistakes give messages.

Charts are compared with core.present.figures built from core.evaluation.ingest on the same folders (trace data
parsed from the chart's
spec); tables with core.analyses.probe.score. Model pairs are tiny random models saved to disk, loaded through the
sidebar as a user would (the embedded SmolLM2: tests/integration/test_dashboard_real.py).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import psutil
import pytest
import streamlit.testing.v1.app_test as app_test
from apptest_pages import APP, TIMEOUT, button, charts, errors, load_checked_pair, loaded_pair, text_input
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from core.analyses.probe import GenerationSettings, ProbeRequest, generate, score
from core.data.qa import load_demo_splits
from core.evaluation.ingest import ingest
from core.evaluation.results import EXAMPLE_RESULTS, Point, split_bar_metrics, store_result_uploads
from core.present.figures import tradeoffs as figures
from core.present.highlight import default_scale, legend_html, token_html
from core.present.numbers import byte_size
from core.unlearn.demo import DemoExperiment
from dashboard import sources
from dashboard.plain import plain, shown
from dashboard.state import demo as demo_state
from dashboard.state import keys

ROOT = Path(__file__).resolve().parents[3]
REAL = EXAMPLE_RESULTS  # real open-unlearning outputs (assets/examples/README.md)
FULL, RETAIN90 = "tofu_Llama-3.2-1B-Instruct_full", "tofu_Llama-3.2-1B-Instruct_retain90"
FIXTURES = ROOT / "tests" / "fixtures" / "ingest"
GRADDIFF = "tofu_Llama-3.2-1B-Instruct_forget10_GradDiff"
SELECT_NOTHING = {"box": [], "lasso": []}


class RecordingStorage(MemoryMediaFileStorage):
    """AppTest's media storage, keeping every file's bytes by id so a test can read what a download serves."""

    files: ClassVar[dict[str, bytes]] = {}

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None) -> str:
        file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
        RecordingStorage.files[file_id] = self.get_file(file_id).content
        return file_id


@pytest.fixture(autouse=True)
def isolated(fresh_app: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app), and what this module needs besides."""
    monkeypatch.setenv("ULENS_DATA_ROOTS", str(FIXTURES))  # links name the fixture folders: they are data roots
    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", RecordingStorage)
    RecordingStorage.files.clear()


def open_page(page: str) -> AppTest:
    """The app on `page`, without loading the default pair (the demo models may not exist yet)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.run()
    if page != "probe":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception
    return at


def same_data(spec: dict, figure) -> bool:
    return spec["data"] == json.loads(figure.to_json())["data"]


def downloaded_csv(at: AppTest, label: str) -> pd.DataFrame:
    """The CSV a download button serves, read back from the media storage by the id in its URL."""
    download = next(b for b in at.get("download_button") if b.label == label)
    return pd.read_csv(io.BytesIO(RecordingStorage.files[Path(download.proto.url).stem]))


SCORING_BLOCK = re.compile(r'<div data-scoring="\d+">(.*)</div>', re.DOTALL)


def token_markup(at: AppTest) -> list[str]:
    """The coloured-token HTML blocks on the page, in order, without the block that numbers a scoring's views
    (the generation's views have none)."""
    blocks = [block.value for block in at.get("html") if "ulens-tokens" in block.value]
    return [match.group(1) if (match := SCORING_BLOCK.fullmatch(block)) else block for block in blocks]


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
    at.session_state[keys.TRADEOFF_CHART] = {
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
def test_tradeoffs_bad_folder_is_a_message(paths: str, message: str, monkeypatch) -> None:
    monkeypatch.setattr(sources, "default_results", lambda: None)  # nothing opened by itself: no chart to keep
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
    assert any(
        caption.value.startswith(f"{len(forget)} items; {len(forget)} with perturbed answers") for caption in at.caption
    )
    assert any("Load a model pair" in info.value for info in at.info)
    assert button(at, "Compute per-item metrics").disabled
    at.selectbox(key="dataset_demo_split").select("world_facts").run()
    assert any(caption.value.startswith(f"{len(load_demo_splits().world_facts)} items;") for caption in at.caption)


def test_dataset_table_equals_probe_scores_and_opens_in_probe(
    tmp_path: Path, tiny_pair_dirs: tuple[Path, Path]
) -> None:
    at = open_page("dataset")
    load_checked_pair(at, *tiny_pair_dirs)
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
    downloaded = downloaded_csv(at, "Download per-item table (CSV)")  # what is shown: the filtered rows
    assert downloaded["index"].tolist() == [3, 5]
    for row, (question, answer) in zip(downloaded.itertuples(index=False), [items[0], items[2]], strict=True):
        direct = score(pair, [ProbeRequest(question, answer)], chat=True)[0]
        assert (row.question, row.answer) == (question, answer)
        assert row.delta == pytest.approx(direct.delta, abs=1e-5)
        assert row.logprob_base == pytest.approx(direct.answer_logprob_base, abs=1e-5)
    at.session_state[keys.DATASET_TABLE] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    button(at, "Open in Probe").click().run()
    assert not at.exception and not errors(at)
    assert [title.value for title in at.title] == ["Probe"]
    assert at.text_area(key="probe_prompt").value == "is w7 france"
    assert at.text_input(key="probe_answer").value == "w8 w9"
    direct = score(pair, [ProbeRequest("is w7 france", "w8 w9")], chat=True)[0]
    assert at.metric[0].value == f"{direct.delta:+.3f}"  # the opened item is scored at once


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
    load_checked_pair(at, *tiny_pair_dirs)
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


def test_the_sidebar_template_reaches_the_probe(tiny_pair_dirs: tuple[Path, Path]) -> None:
    """A template picked in the sidebar is what the Probe scores with (the page's toggle then has no say); back on
    "model default", the toggle chooses chat or plain again. Each figure equals core's score under that template."""
    at = open_page("probe")
    load_checked_pair(at, *tiny_pair_dirs)
    prompt, answer = "is w7 france", "paris"
    at.text_area(key="probe_prompt").input(prompt)
    at.text_input(key="probe_answer").input(answer)
    pair = loaded_pair(at)
    for choice, expected in (("phi-1.5", "phi-1.5"), ("model default", "plain")):
        next(box for box in at.sidebar.selectbox if box.label == "Template").set_value(choice)
        at.toggle(key=keys.PROBE_CHAT).set_value(False)
        button(at, "Score").click().run()
        assert not at.exception and not errors(at)
        direct = score(pair, [ProbeRequest(prompt, answer)], chat=expected)[0]
        assert at.metric[0].value == f"{direct.delta:+.3f}"
        assert at.session_state[keys.PROBE_RESULT][1]["chat"] == expected


def test_probe_takes_a_handover_and_keeps_it_without_a_pair() -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.session_state[keys.PROBE_HANDOVER] = {"prompt": "Where was Ana born?", "answer": "Lima"}
    at.run()
    assert any("Load a model pair" in info.value for info in at.info)
    assert at.session_state[keys.PROBE_PROMPT] == "Where was Ana born?"
    assert keys.PROBE_HANDOVER not in at.session_state


# ---------------------------------------------------------------------------------------------- sidebar


def write_demo_status(**fields) -> dict:
    """A status.json as a building demo writes it (in this test's cache home); returns what core reads back."""
    experiment = DemoExperiment()
    status = {
        "state": "building", "stage": "npo", "fraction": 0.25, "message": "npo: step 3/18, loss 1.234",
        "recipe": experiment.recipe.name, "pid": os.getpid(), "updated": 0.0, "models": ["base"], **fields,
    }  # fmt: skip
    experiment.root.mkdir(parents=True, exist_ok=True)
    (experiment.root / "status.json").write_text(json.dumps(status))
    return experiment.status()


def test_sidebar_shows_the_demo_build_progress_from_its_status_file() -> None:
    expected = write_demo_status()
    assert expected["state"] == "building"
    at = open_page("probe")
    bars = at.sidebar.get("progress")
    assert [bar.value for bar in bars] == [25]
    assert shown(bars[0].proto.text) == f"Building the demo experiment: {expected['message']}"
    captions = [shown(caption.value) for caption in at.sidebar.caption]
    assert f"stage npo · 25% · ready: {', '.join(expected['models'])}" in captions


def test_sidebar_says_when_the_demo_build_stopped() -> None:
    expected = write_demo_status(pid=0)  # a builder that is gone: core reports the build as interrupted
    assert expected["state"] == "interrupted"
    at = open_page("dataset")
    assert not at.sidebar.get("progress")
    warnings = [shown(warning.value) for warning in at.sidebar.warning]
    assert warnings == [f"Demo build interrupted: {expected['message']}"]


def test_sidebar_shows_what_is_loaded_and_its_memory(tiny_pair_dirs: tuple[Path, Path]) -> None:
    at = open_page("dataset")
    load_checked_pair(at, *tiny_pair_dirs)
    pair = loaded_pair(at)
    captions = [caption.value for caption in at.sidebar.caption]
    info = pair.describe()
    hovers = {caption.value: caption.proto.help for caption in at.sidebar.caption}
    for side, typed in (("base", tiny_pair_dirs[0]), ("unlearned", tiny_pair_dirs[1])):  # as typed; resolved on hover
        assert hovers[f"**{side}** {plain(str(typed))}"] == plain(info[side])
    summary = next(text for text in captions if f" · {info['dtype']} · {info['device']} · " in text)
    assert byte_size(pair.parameter_bytes()) in summary  # the weights' size, each shared storage counted once
    shared = (
        f"{info['shared_tensors']} tensors shared by both sides" if info.get("shared_tensors") else "no shared weights"
    )
    assert summary.endswith("one shared backbone" if pair.shares_backbone else shared)
    memory = next(text for text in captions if text.startswith("Memory: "))
    weights, rss = (float(number.replace(",", "")) for number in re.findall(r"([\d,.]+) MB", memory)[:2])
    assert weights == round(pair.parameter_bytes() / 2**20, 1)
    rss_now = psutil.Process().memory_info().rss / 2**20
    assert weights < rss and 0.5 * rss_now < rss < 1.5 * rss_now


# ---------------------------------------------------------------------------------------------- probe: more


def probe_with_pair(pair_dirs: tuple[Path, Path], **params: str) -> AppTest:
    """The Probe page opened from a link with `params`, then a pair loaded in the sidebar."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.session_state[keys.PROBE_STORY_STARTED] = (
        True  # these tests ask their own questions (the story: test_first_visit)
    )
    at.query_params.update(params)
    at.run()
    assert not at.exception
    load_checked_pair(at, *pair_dirs)
    return at


def test_probe_link_restores_inputs_scores_and_follows_changes(tiny_pair_dirs: tuple[Path, Path]) -> None:
    prompt, answer = "the capital of france is", "paris"
    link = {"prompt": prompt, "answer": answer, "chat": "0", "topk": "3", "view": "base", "score": "1"}
    at = probe_with_pair(tiny_pair_dirs, **link)
    assert at.text_area(key="probe_prompt").value == prompt
    assert at.text_input(key="probe_answer").value == answer
    assert at.toggle(key="probe_chat").value is False
    assert at.number_input(key="probe_topk").value == 3
    assert at.segmented_control(key="probe_view").value == "base"
    direct = score(loaded_pair(at), [ProbeRequest(prompt, answer)], chat=False, top_k=3)[0]
    assert at.metric[0].value == f"{direct.delta:+.3f}"  # scored on load because of score=1
    scale = default_scale(direct, "base")
    assert token_markup(at) == [legend_html("base", scale) + token_html(direct, "base", scale)]
    assert at.query_params == link

    at.text_area(key="probe_prompt").input("is w7 france").run()
    unscored = {key: value for key, value in link.items() if key != "score"}
    assert at.query_params == {**unscored, "prompt": "is w7 france"}  # score=1 only while the scores are current
    at.segmented_control(key="probe_view").set_value("unlearned").run()
    at.toggle(key="probe_chat").set_value(True).run()
    button(at, "Score").click().run()
    assert at.query_params == {**link, "prompt": "is w7 france", "view": "unlearned", "chat": "1"}
    direct = score(loaded_pair(at), [ProbeRequest("is w7 france", answer)], chat=True, top_k=3)[0]
    assert at.metric[0].value == f"{direct.delta:+.3f}"


def test_probe_link_with_bad_values_says_what_it_ignored(tiny_pair_dirs: tuple[Path, Path]) -> None:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.query_params.update(prompt="w1 w2", topk="99", view="rainbow", chat="maybe")
    at.run()
    assert not at.exception
    ignored = (
        "chat='maybe' (use 1 or 0); topk='99' (a whole number from 1 to 20); view='rainbow' (one of delta, base, "
        "unlearned)"
    )
    assert [warning.value for warning in at.warning] == [f"Ignored from the link: {plain(ignored)}."]
    load_checked_pair(at, *tiny_pair_dirs)
    assert at.text_area(key="probe_prompt").value == "w1 w2"  # the good values are kept, the others default
    assert (at.number_input(key="probe_topk").value, at.toggle(key="probe_chat").value) == (5, True)
    assert at.segmented_control(key="probe_view").value == "delta"
    assert at.query_params == {"prompt": "w1 w2", "chat": "1", "topk": "5", "view": "delta"}


def test_probe_empty_prompt_is_a_message(tiny_pair_dirs: tuple[Path, Path]) -> None:
    at = probe_with_pair(tiny_pair_dirs)
    button(at, "Score").click().run()
    assert not at.exception
    assert errors(at) == ["the prompt is empty"]
    assert not token_markup(at) and "score" not in at.query_params


def test_probe_token_table_download_and_views_equal_core(tiny_pair_dirs: tuple[Path, Path]) -> None:
    at = probe_with_pair(tiny_pair_dirs)
    at.text_area(key="probe_prompt").input("the capital of france is")
    at.text_input(key="probe_answer").input("paris w3 w4")
    button(at, "Score").click().run()
    assert not at.exception and not errors(at)
    assert not [c.value for c in at.caption if "Scoring" in c.value]  # the busy note is gone once the run ends
    direct = score(loaded_pair(at), [ProbeRequest("the capital of france is", "paris w3 w4")], chat=True)[0]
    table = downloaded_csv(at, "Download token table (CSV)")
    assert table["position"].tolist() == [token.position for token in direct.tokens]
    for column in ("logprob_base", "logprob_unlearned", "delta", "rank_base", "rank_unlearned", "kl"):
        assert table[column].tolist() == pytest.approx([getattr(t, column) for t in direct.tokens], rel=1e-12)
    for view in ("unlearned", "base", "delta"):
        at.segmented_control(key="probe_view").set_value(view).run()
        scale = default_scale(direct, view)
        assert token_markup(at) == [legend_html(view, scale) + token_html(direct, view, scale)]
        assert at.query_params["view"] == view


def test_probe_sampled_generation_equals_core_with_the_same_seed(tiny_pair_dirs: tuple[Path, Path]) -> None:
    at = probe_with_pair(tiny_pair_dirs)
    at.text_area(key="probe_prompt").input("the capital of france is")
    at.number_input(key="probe_new").set_value(6)
    at.toggle(key="probe_sample").set_value(True).run()
    at.number_input(key="probe_temperature").set_value(0.7)
    at.number_input(key="probe_seed").set_value(11)
    button(at, "Generate from both").click().run()
    assert not at.exception and not errors(at)
    settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=0.7, seed=11)
    direct = generate(loaded_pair(at), "the capital of france is", chat=True, settings=settings)
    expected = [
        token_html(scored, "delta", default_scale(scored, "delta"), show_context=False)
        for scored in (direct.base_scored, direct.unlearned_scored)
    ]
    assert token_markup(at) == expected
    assert "6 new tokens at most, sampled, temperature 0.7, seed 11" in [caption.value for caption in at.caption]
    assert not [c.value for c in at.caption if "Generating" in c.value]


def test_probe_example_pills_fill_the_inputs_in_one_click(tiny_pair_dirs: tuple[Path, Path]) -> None:
    at = probe_with_pair(tiny_pair_dirs)
    demo = load_demo_splits()
    forget, retain = at.pills(key="probe_pill_forget"), at.pills(key="probe_pill_retain")
    assert len(forget.options) == min(4, len(demo.forget)) and len(retain.options) == min(4, len(demo.retain))
    retain.set_value(len(demo.forget) + 1).run()  # the second retain question
    assert at.text_area(key="probe_prompt").value == demo.retain.items[1].question
    assert at.text_input(key="probe_answer").value == demo.retain.items[1].answer
    at.pills(key="probe_pill_forget").set_value(0).run()
    assert at.text_area(key="probe_prompt").value == demo.forget.items[0].question
    assert at.query_params["prompt"] == demo.forget.items[0].question


# ---------------------------------------------------------------------------------------------- tradeoffs: more


def tradeoffs_from_link(**params: str | list[str]) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state[keys.AUTOLOAD] = False
    at.query_params.update(params)
    at.run()  # the default page (Probe, waiting for a pair) leaves other pages' parameters alone
    at.switch_page("views/tradeoffs.py").run()
    assert not at.exception
    return at


def test_tradeoffs_link_loads_folders_and_axes_and_follows_changes() -> None:
    link = {"folder": str(REAL), "x": "forget_truth_ratio", "y": "retain_Q_A_Prob"}
    at = tradeoffs_from_link(**link)
    assert not errors(at)
    assert next(t for t in at.text_area if t.label.startswith("Result folders")).value == str(REAL)
    summary = ingest([REAL]).summary
    drawn = charts(at)["tradeoff_chart"]
    assert same_data(drawn, figures.tradeoff_figure(summary, "forget_truth_ratio", "retain_Q_A_Prob"))
    assert at.query_params == link
    at.selectbox(key="tradeoff_y").select("model_utility").run()
    assert at.query_params == {**link, "y": "model_utility"}
    assert same_data(
        charts(at)["tradeoff_chart"], figures.tradeoff_figure(summary, "forget_truth_ratio", "model_utility")
    )


def test_tradeoffs_link_with_oracle_and_an_unknown_axis() -> None:
    folders = [str(FIXTURES / GRADDIFF), str(REAL / FULL)]
    at = tradeoffs_from_link(folder=folders, oracle=str(FIXTURES / RETAIN90), x="no_such_metric")
    result = ingest(folders, oracle=FIXTURES / RETAIN90)
    message = f"The link's x axis {plain(repr('no_such_metric'))} is not a metric of these results; showing "
    assert message + f"{plain('forget_Q_A_Prob')}." in [warning.value for warning in at.warning]
    drawn = charts(at)["tradeoff_chart"]
    assert same_data(drawn, figures.tradeoff_figure(result.summary, "forget_Q_A_Prob", "model_utility"))
    assert at.query_params == {
        "folder": folders, "oracle": str(FIXTURES / RETAIN90), "x": "forget_Q_A_Prob", "y": "model_utility"
    }  # fmt: skip


def test_tradeoffs_summary_download_equals_ingested_summary() -> None:
    at = open_page("tradeoffs")
    load_results(at, str(REAL))
    summary = ingest([REAL]).summary
    downloaded = downloaded_csv(at, "Download summary table (CSV)")
    assert list(downloaded.columns) == list(summary.columns)
    assert downloaded[["model", "metric"]].values.tolist() == summary[["model", "metric"]].values.tolist()
    assert downloaded["value"].tolist() == pytest.approx(summary["value"].astype(float).tolist(), nan_ok=True)


# ---------------------------------------------------------------------------------------------- first start


def _first_start_page() -> None:
    import streamlit as st

    from dashboard.state import keys
    from dashboard.state.demo import first_start_key
    from dashboard.state.pair import chat_default

    key = first_start_key(("demo:target", "demo:unlearned", "auto", "auto", False, False))
    st.session_state[keys.PAIR_KEY] = key
    st.write(" | ".join(key[:2]))
    st.write(f"chat default {chat_default()}")


def test_first_start_opens_base_vs_target_while_a_background_build_makes_the_unlearned_model(monkeypatch) -> None:
    """`make run` builds the demo in the background: the first session opens base vs target (ready first) rather
    than waiting for the default pair, and the chat toggles default to the demo's format."""
    building = {"state": "building", "stage": "npo", "fraction": 0.3, "message": "npo: step 2/18", "pid": 1}
    monkeypatch.setattr(demo_state, "read_demo_status", lambda: dict(building))
    monkeypatch.setattr(demo_state, "demo_stages_to_build", lambda texts: ["npo"])
    at = AppTest.from_function(_first_start_page).run(timeout=TIMEOUT)
    assert not at.exception
    assert at.markdown[0].value == "demo:base | demo:target" and at.session_state[keys.INTERIM_OPENED] is True
    assert at.markdown[1].value == f"chat default {DemoExperiment().recipe.chat}"

    monkeypatch.setattr(demo_state, "demo_stages_to_build", lambda texts: [])  # npo is built: the default pair
    at = AppTest.from_function(_first_start_page).run(timeout=TIMEOUT)
    assert at.markdown[0].value == "demo:target | demo:unlearned" and keys.INTERIM_OPENED not in at.session_state

    monkeypatch.setattr(demo_state, "demo_stages_to_build", lambda texts: ["npo"])
    monkeypatch.setattr(demo_state, "read_demo_status", lambda: {**building, "state": "interrupted"})
    at = AppTest.from_function(_first_start_page).run(timeout=TIMEOUT)  # nobody builds it: load builds it here
    assert at.markdown[0].value == "demo:target | demo:unlearned"


def test_build_demo_follows_a_background_builder_instead_of_queueing_behind_it(monkeypatch) -> None:
    checks = iter([False, False, True])
    statuses = iter([0.25, 0.5])

    class Experiment:
        def is_built(self, name: str) -> bool:
            return next(checks)

        def build(self, *args, **kwargs) -> None:
            raise AssertionError("the stage is being built by another process: it must not be built twice")

    monkeypatch.setattr(demo_state, "DemoExperiment", Experiment)
    monkeypatch.setattr(demo_state, "DEMO_REFRESH_S", 0.0)
    monkeypatch.setattr(
        demo_state,
        "read_demo_status",
        lambda: {"state": "building", "fraction": next(statuses), "message": "m", "pid": 1},
    )
    shown: list[float] = []
    demo_state.build_demo(["npo"], lambda fraction, message: shown.append(fraction))
    assert shown == [0.25, 0.5]
