"""--lm-eval: lm-evaluation-harness runs a local task on our model object, and the files are open-unlearning's
LMEval layout, read back by ingest. The harness's log-likelihoods are checked against a plain forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import logit_tolerance, save_tiny_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.evaluation.ingest import ingest
from core.evaluation.lm_eval import run_lm_eval, summarize, task_config

WORDS = tuple(
    dict.fromkeys(
        [
            "What",
            "is",
            "the",
            "capital",
            "of",
            "France?",
            "The",
            "France",
            "is",
            "Paris.",
            "Berlin.",
            "Madrid.",
            "Rome.",
        ]
    )
)


def test_local_task_points_at_the_demo_world_facts() -> None:
    config = task_config("world_facts_mcq")
    path = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert path.is_file() and path.name == "world_facts.jsonl"
    assert task_config("mmlu") == "mmlu"  # a harness task name passes through


def test_summary_is_open_unlearning_s_layout() -> None:
    results = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1}}}
    assert summarize(results, "t") == {"t/acc": 0.5, "t/acc_stderr": 0.1}
    grouped = {"groups": {"g": {"acc,none": 0.25}}, "results": {"g": {"acc,none": 0.0}}}
    assert summarize(grouped, "g") == {"g/acc": 0.25}


def test_world_facts_mcq_runs_on_our_model_object(tmp_path: Path) -> None:
    folder = save_tiny_model_dir(tmp_path / "m", words=WORDS)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    summary = run_lm_eval(model, tokenizer, ["world_facts_mcq"], tmp_path / "out", batch_size=4, limit=2)
    samples = json.loads((tmp_path / "out" / "LMEval_EVAL.json").read_text())["world_facts_mcq"]
    assert json.loads((tmp_path / "out" / "LMEval_SUMMARY.json").read_text()) == summary
    correct = []
    for sample in samples:
        logliks = []
        for (context, continuation), response in zip(sample["arguments"], sample["resps"], strict=True):
            # the plain computation: context and continuation tokenised as one text, the continuation's log-probs
            whole = tokenizer(context + continuation).input_ids
            start = len(tokenizer(context).input_ids)
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)[torch.arange(start - 1, len(whole) - 1), whole[start:]]
            expected = float(logp.sum())
            tolerance = len(whole) * logit_tolerance(model, logits) * 2
            assert response[0][0] == pytest.approx(expected, abs=tolerance)
            logliks.append(expected)
        correct.append(float(max(range(len(logliks)), key=logliks.__getitem__) == sample["target"]))
    assert summary["world_facts_mcq/acc"] == pytest.approx(sum(correct) / len(correct))
    read = ingest([tmp_path / "out"])
    assert set(read.summary["metric"]) >= {"world_facts_mcq/acc", "world_facts_mcq/acc_norm"}
