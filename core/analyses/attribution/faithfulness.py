"""Which map explains the model's behaviour best on this prompt: deletion and insertion curves (Petsiuk et al.,
RISE, 2018; Samek et al., 2017) for every attribution method, computed in batches.

Deletion: replace the prompt's features by the baseline in the order the side's map ranks them (most positive
first) and watch the answer's log-prob fall; insertion: start from every feature replaced and put them back in that
order. k = 0 … F features, all k of both curves in batches of one forward pass. Areas are trapezoids over the
fraction k/F (nats): a faithful map has a low deletion area and a high insertion area, and the area between the
two curves, insertion − deletion, ranks the methods (higher: more faithful). A seeded random order is the floor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from core.analyses.attribution.method import ATTRIBUTION_METHODS
from core.analyses.attribution.problem import Problem, build_problem, row_logprobs, side_inputs
from core.analyses.attribution.result import AttributionResult
from core.analyses.attribution.settings import BASELINES, BATCH_TOKENS, DEFAULT_BATCH_TOKENS, AttributionSettings
from core.common.serial import JsonResult
from core.models.pair import SIDES, ModelPair

RANDOM_ORDERS = 4  # random feature orders averaged for the floor


@dataclass
class Curve:
    """One ordering's deletion and insertion curves (answer log-prob, nats, summed over its tokens) per k."""

    deletion: list[float]
    insertion: list[float]
    deletion_area: float
    insertion_area: float

    @property
    def between(self) -> float:
        """Insertion area − deletion area: the higher, the more the order tracks what the model uses."""
        return self.insertion_area - self.deletion_area


@dataclass
class Faithfulness(JsonResult):
    """Per side (base, unlearned), each method's curves and a random order's, over the same k = 0 … F."""

    prompt: str
    answer: str
    baseline: str
    fractions: list[float]
    curves: dict[str, dict[str, Curve]] = field(default_factory=dict)  # side -> method -> curve
    random: dict[str, Curve] = field(default_factory=dict)  # side -> the random orders' mean curve

    def best(self, side: str) -> str | None:
        """The method whose order has the largest area between its curves on `side`."""
        methods = self.curves.get(side, {})
        return max(methods, key=lambda m: methods[m].between) if methods else None

    @classmethod
    def from_dict(cls, data: dict) -> Faithfulness:
        curves = {side: {m: Curve(**c) for m, c in methods.items()} for side, methods in data["curves"].items()}
        random = {side: Curve(**c) for side, c in data["random"].items()}
        return cls(data["prompt"], data["answer"], data["baseline"], data["fractions"], curves, random)


def area(values: Sequence[float]) -> float:
    """Trapezoid area over k/F in [0, 1] (a one-point curve: its value)."""
    v = torch.as_tensor(values, dtype=torch.float64)
    if len(v) == 1:
        return float(v[0])
    return float(torch.trapezoid(v, dx=1.0 / (len(v) - 1)))


def order_masks(order: Sequence[int], n_features: int) -> torch.Tensor:
    """[2 (F + 1), F] masks (1 = feature kept): deletion k = 0 … F, then insertion k = 0 … F, along `order`."""
    masks = torch.ones(2 * (n_features + 1), n_features)
    for k in range(n_features + 1):
        masks[k, list(order[:k])] = 0.0
        masks[n_features + 1 + k] = 0.0
        masks[n_features + 1 + k, list(order[:k])] = 1.0
    return masks


def masked_logprobs(
    model: torch.nn.Module, problem: Problem, inputs, masks: torch.Tensor, batch_tokens: int
) -> torch.Tensor:
    """[M] the answer's log-prob (summed over its tokens) with the features where masks is 0 replaced."""
    positions = problem.feature_of_position().to(inputs.context.device)
    per_batch = max(1, batch_tokens // len(problem.ids))
    out = []
    with torch.no_grad():
        for chunk in masks.to(inputs.context.device).split(per_batch):
            keep = chunk[:, positions].unsqueeze(-1) == 1
            embeds = torch.where(keep, inputs.context, inputs.baseline)
            out.append(row_logprobs(model, inputs, problem, embeds).sum(-1).cpu())
    return torch.cat(out)


def curves_for_orders(
    model: torch.nn.Module, problem: Problem, inputs, orders: Sequence[Sequence[int]], batch_tokens: int
) -> list[Curve]:
    """Deletion and insertion curves of each feature order, all orders' masks in shared batches."""
    n = len(problem.feature_groups)
    masks = torch.cat([order_masks(order, n) for order in orders])
    values = masked_logprobs(model, problem, inputs, masks, batch_tokens).view(len(orders), 2, n + 1)
    return [Curve(v[0].tolist(), v[1].tolist(), area(v[0].tolist()), area(v[1].tolist())) for v in values]


def ranking(feature_scores: Sequence[float]) -> list[int]:
    """Features by descending score (ties by position)."""
    scores = torch.as_tensor(feature_scores, dtype=torch.float64)
    return sorted(range(len(scores)), key=lambda f: (-float(scores[f]), f))


def _mean_curve(curves: list[Curve]) -> Curve:
    deletion = torch.tensor([c.deletion for c in curves]).mean(0).tolist()
    insertion = torch.tensor([c.insertion for c in curves]).mean(0).tolist()
    return Curve(deletion, insertion, area(deletion), area(insertion))


def faithfulness(
    pair: ModelPair,
    results: Sequence[AttributionResult],
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> Faithfulness:
    """Deletion and insertion curves of every result's map (same prompt, answer and granularity) on each side."""
    first = results[0]
    settings = replace(first.settings, per_token=False)
    problem = build_problem(pair, first.prompt, first.answer, first.chat, settings)
    n = len(problem.feature_groups)
    baseline_id = BASELINES[settings.baseline](pair.tokenizer)
    batch_tokens = settings.batch_tokens or BATCH_TOKENS.get(pair.device.type, DEFAULT_BATCH_TOKENS)
    generator = torch.Generator().manual_seed(seed)
    random_orders = [torch.randperm(n, generator=generator).tolist() for _ in range(RANDOM_ORDERS)]
    out = Faithfulness(first.prompt, first.answer, settings.baseline, [k / max(n, 1) for k in range(n + 1)])
    for i, side in enumerate(SIDES):
        orders = [ranking(torch.tensor(getattr(r, side)).sum(0).tolist()) for r in results]
        with pair.use(side) as model:
            inputs = side_inputs(model, problem, baseline_id)
            curves = curves_for_orders(model, problem, inputs, orders + random_orders, batch_tokens)
        out.curves[side] = {r.method: c for r, c in zip(results, curves, strict=False)}
        out.random[side] = _mean_curve(curves[len(results) :])
        if progress:
            progress((i + 1) / len(SIDES), f"faithfulness curves: {side}")
    return out


def compare_methods(
    pair: ModelPair,
    prompt: str,
    answer: str,
    chat: bool = False,
    settings: AttributionSettings | None = None,
    methods: Sequence[str] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[list[AttributionResult], Faithfulness]:
    """Attribute with every method (the whole answer, one row) and draw each map's faithfulness curves."""
    from core.analyses.attribution.run import attribute

    settings = replace(settings or AttributionSettings(), per_token=False)
    names = list(methods or ATTRIBUTION_METHODS.names())
    results = []
    for i, name in enumerate(names):
        if progress:
            progress(i / (len(names) + 1), f"attributing with {name}")
        results.append(attribute(pair, prompt, answer, name, chat, settings))
    return results, faithfulness(pair, results, settings.seed)
