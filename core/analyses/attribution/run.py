"""`attribute`: check the request, build the problem, find both ends of every row, run the chosen method, and
return an AttributionResult."""

from __future__ import annotations

import logging

import torch

from core.analyses.attribution.method import ATTRIBUTION_METHODS, AttributionMethod, Run
from core.analyses.attribution.problem import Problem, build_problem, row_logprobs, side_inputs
from core.analyses.attribution.result import AttributionResult
from core.analyses.attribution.settings import (
    BASELINES,
    BATCH_TOKENS,
    DEFAULT_BATCH_TOKENS,
    SETTINGS_OPTIONS,
    AttributionSettings,
)
from core.common import validate_options
from core.common.errors import UserError
from core.common.limits import check_text, ensure_fits, model_shape
from core.models.pair import SIDES, ModelPair

log = logging.getLogger(__name__)


def _ensure_fits(pair: ModelPair, problem: Problem, method: AttributionMethod, batch_tokens: int) -> None:
    """Refuse a run whose batches would not fit: what a batch of the method keeps (`AttributionMethod.batch_bytes`)
    plus the answer logits of each of its sequences. Measured on SmolLM2-135M on a CPU, integrated gradients over
    110 tokens with 9 answer rows: estimate 0.49 GiB, peak growth 0.91 GiB, of which about 0.3 GiB is the run's
    fixed overhead (as in the runs of `saved_for_backward`)."""
    with pair.use("base") as model:
        shape = model_shape(model)
    itemsize = torch.empty((), dtype=pair.dtype).element_size()
    points = method.sequences_per_batch(problem, batch_tokens)
    kept = method.batch_bytes(shape, problem, points, itemsize)
    logits = points * len(problem.answer_ids) * shape.vocab * (itemsize + 2 * 4)  # logits, float copy, log-softmax
    ensure_fits(kept + logits, pair.device, f"attributing {len(problem.ids)} tokens ({points} sequences per batch)")


def _check_request(method: str, settings: AttributionSettings, prompt: str, answer: str) -> None:
    """Refuse an unknown method or baseline and anything beyond the bounds, before any model work."""
    ATTRIBUTION_METHODS.get(method)  # an unknown method is refused with the registered names
    if settings.baseline not in BASELINES:
        raise UserError(f"unknown baseline {settings.baseline!r}; choose one of {', '.join(BASELINES)}")
    # every declared setting, not only the method's: a stored result must hold valid settings whatever the method
    validate_options(tuple(SETTINGS_OPTIONS.values()), settings, "attribution")
    check_text(prompt, "prompt")
    check_text(answer, "answer")


def attribute(
    pair: ModelPair,
    prompt: str,
    answer: str,
    method: str = "integrated_gradients",
    chat: bool = False,
    settings: AttributionSettings | None = None,
) -> AttributionResult:
    """Attribute the answer's log-prob (whole or per token) to the prompt, for base, unlearned and Δ."""
    settings = settings or AttributionSettings()
    _check_request(method, settings, prompt, answer)
    baseline_id = BASELINES[settings.baseline](pair.tokenizer)
    # Gradients need autograd even when a caller (e.g. a UI thread) sits inside inference_mode.
    with torch.inference_mode(False):
        problem = build_problem(pair, prompt, answer, chat, settings)
        batch_tokens = settings.batch_tokens or BATCH_TOKENS.get(pair.device.type, DEFAULT_BATCH_TOKENS)
        _ensure_fits(pair, problem, ATTRIBUTION_METHODS.get(method), batch_tokens)
        run = Run(pair, problem, {}, settings, batch_tokens)
        for side in SIDES:
            with pair.use(side) as model:
                run.inputs[side] = inputs = side_inputs(model, problem, baseline_id)
                with torch.no_grad():
                    both_ends = torch.stack([inputs.context, inputs.baseline])
                    run.endpoints[side] = row_logprobs(model, inputs, problem, both_ends)
        maps = ATTRIBUTION_METHODS.get(method).maps(run)
    if not all(torch.isfinite(m).all() for m in (maps.base, maps.unlearned)):
        raise UserError(
            f"the {settings.baseline!r} baseline gives non-finite attributions on this model; choose another baseline"
        )
    log.info(
        "attributed %d answer row(s) × %d prompt feature(s) with %s",
        len(problem.row_groups),
        len(problem.feature_groups),
        method,
    )
    return AttributionResult(
        method=method,
        prompt=prompt,
        answer=answer,
        chat=chat,
        settings=settings,
        prompt_tokens=problem.feature_labels,
        answer_tokens=problem.row_labels,
        base=maps.base.tolist(),
        unlearned=maps.unlearned.tolist(),
        delta=maps.delta.tolist(),
        logprob={side: run.endpoints[side][0].tolist() for side in SIDES},
        baseline_logprob={side: run.endpoints[side][1].tolist() for side in SIDES},
        convergence_delta=None
        if maps.convergence_delta is None
        else {side: d.tolist() for side, d in maps.convergence_delta.items()},
        contrast_exact=ATTRIBUTION_METHODS.get(method).contrast_exact,
        explained=None if maps.explained is None else {side: e.tolist() for side, e in maps.explained.items()},
    )
