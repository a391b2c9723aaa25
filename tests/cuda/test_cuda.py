"""The GPU tier: probe, attribution, logit lens, evaluate and robustness on CUDA in float32 and bfloat16, each against
the CPU float32 result of the same tiny random Llama pair. Skipped where no CUDA GPU is available (the whole tier
is; tests/conftest.py marks it `cuda`). Figures from a GPU run go to docs/PERFORMANCE-scale.md.

Tolerances, from the arithmetic: every one of the model's L layers ends in sums of at most W products, so a logit
computed in a format with unit roundoff u lies within about L·W·u·max|z| of exact (tiny_models.logit_tolerance for
float32); a log-prob moves by at most twice its logits' error (the log-sum-exp moves by at most the largest). For
bfloat16 the weights themselves are rounded (u = 2⁻⁸), which the same bound covers.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import TinyTokenizer, make_tiny_llama

from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.lens import logit_lens
from core.analyses.probe import ProbeRequest, score
from core.attacks.base import RobustnessSettings
from core.attacks.runner import run_attacks
from core.data.qa import QADataset, QAItem, SplitData
from core.evaluation.evaluate import evaluate_model
from core.evaluation.settings import EvalSettings
from core.models.pair import ModelPair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuda tier needs a CUDA GPU")

PROMPT, ANSWER = "the capital of france is", " paris."
ITEMS = [QAItem(index=i, question=f"who is zed{i}?", answer=f" zed{i} paints cats.") for i in range(3)]
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}


def make_pair(device: str, dtype: torch.dtype) -> ModelPair:
    models = [make_tiny_llama(seed=seed).to(device=device, dtype=dtype) for seed in (0, 1)]
    return ModelPair.from_models(*models, TinyTokenizer())


def logprob_tolerance(dtype: torch.dtype, max_logit: float) -> float:
    """2 · L·W·u·max|z| for the CPU float32 and the CUDA run, summed (tiny Llama: L = 2, W = 64)."""
    layers, width = 2, 64
    return 2 * layers * width * (UNIT_ROUNDOFF[dtype] + UNIT_ROUNDOFF[torch.float32]) * max_logit * 2


@pytest.fixture(scope="module")
def cpu_pair() -> ModelPair:
    return make_pair("cpu", torch.float32)


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def gpu(request) -> tuple[ModelPair, torch.dtype]:
    return make_pair("cuda", request.param), request.param


def max_logit(pair: ModelPair) -> float:
    """max|z| of the pair's base logits over a span of the vocabulary (the scale the tolerance multiplies)."""
    ids = torch.tensor([[1, *range(3, 40)]], device=pair.device)
    with pair.use("base") as model, torch.no_grad():
        return float(model(ids).logits.float().abs().max())


def test_probe_on_cuda_matches_cpu(cpu_pair, gpu):
    pair, dtype = gpu
    tol = logprob_tolerance(dtype, max_logit(cpu_pair))
    (cpu,) = score(cpu_pair, [ProbeRequest(PROMPT, ANSWER)])
    (cuda,) = score(pair, [ProbeRequest(PROMPT, ANSWER)])
    for a, b in zip(cpu.tokens, cuda.tokens, strict=True):
        assert abs(a.logprob_base - b.logprob_base) <= tol and abs(a.logprob_unlearned - b.logprob_unlearned) <= tol


def test_attribution_on_cuda_matches_cpu(cpu_pair, gpu):
    pair, dtype = gpu
    settings = AttributionSettings(baseline="eos", n_steps=16)
    cpu = attribute(cpu_pair, PROMPT, ANSWER, settings=settings)
    cuda = attribute(pair, PROMPT, ANSWER, settings=settings)
    # each entry is a quadrature sum of 16 gradient·Δx terms; its error is bounded by the log-prob tolerance times
    # the number of attributed features (completeness ties the row's sum to a log-prob difference)
    tol = logprob_tolerance(dtype, max_logit(cpu_pair)) * len(cpu.prompt_tokens)
    torch.testing.assert_close(torch.tensor(cuda.delta), torch.tensor(cpu.delta), atol=tol, rtol=0)


def test_lens_on_cuda_matches_cpu(cpu_pair, gpu):
    pair, dtype = gpu
    tol = logprob_tolerance(dtype, max_logit(cpu_pair))
    cpu, cuda = logit_lens(cpu_pair, PROMPT, ANSWER), logit_lens(pair, PROMPT, ANSWER)
    for side in ("base", "unlearned"):
        got, want = (torch.tensor(getattr(r, side).logprob) for r in (cuda, cpu))
        torch.testing.assert_close(got, want, atol=tol, rtol=0)


def test_evaluate_on_cuda_matches_cpu(cpu_pair, gpu):
    pair, dtype = gpu
    data = SplitData(forget=QADataset("t", "forget", ITEMS))
    logs = []
    for p in (cpu_pair, pair):
        with p.use("unlearned") as model:
            logs.append(evaluate_model(model, p.tokenizer, data, EvalSettings(chat=False)))
    tol = logprob_tolerance(dtype, max_logit(cpu_pair))
    for item in ITEMS:
        a, b = (log["forget_Q_A_Prob"]["value_by_index"][str(item.index)]["avg_loss"] for log in logs)
        assert abs(a - b) <= tol


def test_robustness_on_cuda_matches_cpu(cpu_pair, gpu):
    pair, dtype = gpu
    settings = RobustnessSettings(chat=False)
    cpu, cuda = (run_attacks(p, ITEMS, ["logit_lens"], settings) for p in (cpu_pair, pair))
    tol = logprob_tolerance(dtype, max_logit(cpu_pair))
    for side in ("base", "unlearned"):  # mean answer probabilities: exp moves them by at most a factor e^tol
        assert abs(math.log(getattr(cuda, side)) - math.log(getattr(cpu, side))) <= tol
