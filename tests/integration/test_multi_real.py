"""Integration: the probe across the demo's NPO checkpoints (the quick experiment on the real SmolLM2) equals the
two-model probe of each pair, in the library and through `python -m core probe --run`.

Tolerance. The multi-model pass and a pairwise probe do the same float32 arithmetic in another order (the target's
side once for all checkpoints; the adapters stacked over 7 blocks instead of 2), so each logit lies within
τ = 2·L·W·eps32·max|z| of the other (tests/tiny_models.logit_tolerance, L = 30 layers, W = 1536 for SmolLM2-135M),
and log-softmax being 2-Lipschitz in the max norm, log-probs within 2τ; a sum over n answer tokens within 2nτ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import logit_tolerance

from core.analyses.multi import ModelSet, probe_many, run_entries, score_many
from core.analyses.probe import ProbeRequest, score
from core.models.pair import ModelPair
from core.models.spec import ModelSpec
from core.scoring.encoding import encode
from core.unlearn.demo import RECIPES, TARGET, DemoExperiment

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ModelSpec("demo:x", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def experiment() -> DemoExperiment:
    """The quick demo's target and NPO run in the cache home (built once; later runs reuse the cache)."""
    built = DemoExperiment(RECIPES["quick"])
    built.build([TARGET, "npo"])
    return built


@pytest.fixture(scope="module")
def models(experiment) -> ModelSet:
    return ModelSet.load(experiment.spec(TARGET, TEMPLATE), run_entries(experiment.run_dir("npo"), TEMPLATE))


def tau(pair: ModelPair, request: ProbeRequest, chat: bool) -> float:
    """τ for this request's logits on both sides (a plain pass each)."""
    row = encode(pair.tokenizer, request.prompt, request.answer, chat, pair.context_length)
    bound = 0.0
    for side in ("base", "unlearned"):
        with pair.use(side) as model, torch.no_grad():
            logits = model(torch.tensor([row.input_ids])).logits[0, row.score_from - 1 : -1]
        bound = max(bound, logit_tolerance(model, logits))
    return bound


def test_npo_checkpoints_equal_their_pairwise_probes(experiment, models) -> None:
    chat = experiment.recipe.chat
    items = experiment.data.forget.items[:3]
    requests = [ProbeRequest(item.question, item.answer) for item in items]
    assert models.labels == [f"npo@{step}" for step in experiment.checkpoints("npo")]
    assert len(models.groups()) == 1  # the target and every checkpoint: adapters on one backbone, one pass
    got = score_many(models, requests, chat=chat)
    for i, entry in enumerate(models.entries):
        pair = ModelPair.load(experiment.spec(TARGET, TEMPLATE), entry.spec)
        for g, w, request in zip(got[i], score(pair, requests, chat=chat), requests, strict=True):
            t = tau(pair, request, chat)
            assert [x.token_id for x in g.tokens] == [x.token_id for x in w.tokens]
            for a, b in zip(g.tokens, w.tokens, strict=True):
                assert a.logprob_unlearned == pytest.approx(b.logprob_unlearned, abs=2 * t)
                assert a.logprob_base == pytest.approx(b.logprob_base, abs=2 * t)
    # the trajectory means something: NPO's last checkpoint gives the forget answers less probability than the
    # target (the demo's own criterion, tests/integration/test_demo_real.py: below half the target's)
    first, last = (sum(r.answer_logprob_base for r in got[0]), sum(r.answer_logprob_unlearned for r in got[-1]))
    assert last < first


def test_cli_probe_over_a_run_folder(experiment, models) -> None:
    item = experiment.data.forget.items[0]
    env = {**os.environ, "ULENS_DEMO_QUICK": "1"}
    run = str(experiment.run_dir("npo"))
    command = [sys.executable, "-m", "core", "probe", "--base", "demo:target", "--run", run, "--prompt", item.question,
               "--answer", item.answer, "--dtype", "float32", "--device", "cpu", "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert list(payload) == ["models", "results"] and payload["models"] == models.labels
    want = probe_many(models, ProbeRequest(item.question, item.answer), chat=experiment.recipe.chat)
    for result, expected in zip(payload["results"], want.results, strict=True):
        assert result["answer"] == item.answer
        t = tau(models.pair(0), ProbeRequest(item.question, item.answer), experiment.recipe.chat)
        n = len(expected.tokens)
        assert result["answer_logprob_unlearned"] == pytest.approx(expected.answer_logprob_unlearned, abs=2 * n * t)


def test_report_checkpoints_view_of_the_npo_run(experiment, models, tmp_path) -> None:
    """`python -m core report --checkpoints` on the quick demo's NPO run: its table holds probe_many's answer
    log-probs (within 2nτ: another process, the same arithmetic), its lens map one column per checkpoint after the
    base and one row per layer, and the summary the last checkpoint's figure."""
    import html
    import io
    import re
    from urllib.parse import unquote

    import pandas as pd

    item = experiment.data.forget.items[0]
    request = ProbeRequest(item.question, item.answer)
    out = tmp_path / "report.html"
    env = {**os.environ, "ULENS_DEMO_QUICK": "1"}
    command = [sys.executable, "-m", "core", "report", "--base", "demo:target", "--run", str(experiment.run_dir("npo")),
               "--checkpoints", f"{item.question}|{item.answer}", "--lens", "--dtype", "float32", "--device", "cpu",
               *(["--chat"] if experiment.recipe.chat else []), "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    document = out.read_text(encoding="utf-8")
    link = re.search(r'<a download="checkpoints-1\.csv" href="data:text/csv;charset=utf-8,([^"]*)"', document)
    table = pd.read_csv(io.StringIO(unquote(html.unescape(link.group(1)))))
    want = probe_many(models, request, chat=experiment.recipe.chat)
    assert table["model"].tolist() == models.labels
    bound = 2 * len(want.results[0].tokens) * tau(models.pair(0), request, experiment.recipe.chat)
    assert table["answer_logprob"].tolist() == pytest.approx(want.answer_logprobs(), abs=bound)
    scripts = re.findall(r'<script type="application/json" id="figure-\d+">(.*?)</script>', document, re.S)
    figures = [json.loads(text) for text in scripts]
    lens = figures[-1]["data"][0]
    assert lens["x"] == ["base", *(f"step {step}" for step in experiment.checkpoints("npo"))]
    with models.use(0) as model:
        assert lens["y"] == list(range(model.config.num_hidden_layers + 1))  # 0: the embeddings
    last = max(experiment.checkpoints("npo"))
    said = re.search(rf"npo at its last checkpoint \(step {last}\) (-?[0-9.]+) \(Δ", html.unescape(document))
    assert float(said.group(1)) == pytest.approx(want.answer_logprobs()[-1], abs=bound + 5e-4)  # quoted to 3 decimals
