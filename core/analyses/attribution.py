"""Which prompt tokens drive the answer, before and after unlearning: captum attribution for both sides of a pair.

Every method attributes the answer's log-probability (whole, or each answer token: a matrix answer rows × prompt
features) to the prompt's input embeddings, with the answer's own prefix held fixed (captum's `LLMAttribution` view;
`include_answer_prefix` attributes to the answer's earlier tokens too, inseq's view) and special tokens fed as they
are (`keep_special`; an attention sink replaced by a baseline makes the IG path very rough). Gradient methods
(integrated gradients, gradient × input) attribute each model's log-probs and show Δ as the difference of the maps;
perturbation methods (feature ablation, occlusion, Shapley sampling) run every perturbation through both models
and attribute Δ = log p_unlearned − log p_base itself (the probe's sign: negative where the answer was lost).

Speed: the per-answer-token matrix needs one gradient per answer token at every IG step. captum's
`LLMGradientAttribution` reruns the whole IG (forward and backward) once per answer token; here the answer rows
share one forward per batch of steps and get all their gradients from one batched backward on that graph
(`_shared_forward_gradients`, plugged into captum's `IntegratedGradients` as its gradient function): the same
numbers for F + n·B instead of n·(F + B) (docs/PERFORMANCE-attribution.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch

from core.analyses.probe import encode
from core.common import Option, Registry, option, options_of, validate_options
from core.common.errors import UserError
from core.common.limits import (
    FORWARD_ACTIVATION_FACTOR,
    MAX_IG_STEPS,
    MAX_SHAPLEY_SAMPLES,
    activation_bytes,
    attention_bytes,
    check_text,
    ensure_fits,
    model_shape,
    saved_for_backward,
)
from core.models.pair import SIDES, ModelPair

log = logging.getLogger(__name__)

GRANULARITIES = ("token", "word")
# Tokens (× answer rows for IG) per batch of steps or perturbations, by device type. On CPU, IG's batched backward
# slows down once its working set outgrows the caches (measured: ~8 steps × 31 tokens × 7 rows is the sweet spot).
BATCH_TOKENS = {"cpu": 2048}
# captum's integration rules (captum.attr._utils.approximation_methods) and the baselines of BASELINES below
IG_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BASELINE_NAMES = ("pad", "eos", "unk", "neutral", "zero")
DEFAULT_BATCH_TOKENS = 32768
_SEED_LOCK = threading.Lock()  # Shapley sampling seeds torch's global RNG: one seeded run at a time


@dataclass(frozen=True)
class AttributionSettings:
    """How to attribute: target rows, baseline, granularity and each method's own knobs."""

    per_token: bool = False  # one row per answer token (or word) instead of the whole answer's log-prob
    # The methods' own knobs are typed options (core.common.option): each method declares the ones it reads.
    baseline: str = option(
        "pad", "What replaces a prompt token: the start of the integration path, or the ablated value.",
        choices=BASELINE_NAMES, label="Baseline",
    )  # fmt: skip
    granularity: str = "token"  # "token" or "word" (sub-word tokens summed, or ablated together, per word)
    n_steps: int = option(
        32, "Quadrature points; more steps, smaller convergence delta.", min=1, max=MAX_IG_STEPS, label="IG steps"
    )
    method: str = option(
        "gausslegendre", "captum's quadrature rule for integrated gradients.", choices=IG_RULES, label="IG rule"
    )
    n_samples: int = option(
        16, "Random feature orders Shapley sampling averages over.", min=1, max=MAX_SHAPLEY_SAMPLES,
        label="Shapley samples",
    )  # fmt: skip
    window: int = option(3, "Prompt tokens or words hidden together (clipped to the prompt).", min=1, label="Window")
    include_answer_prefix: bool = False  # also attribute to the answer's own earlier tokens (inseq's view)
    keep_special: bool = True  # special tokens (BOS, chat markers) are fed as they are, never attributed
    seed: int = option(0, "Seeds the random feature orders (the same seed, the same map).", min=0, label="Seed")
    batch_tokens: int | None = None  # None: BATCH_TOKENS for the device, else DEFAULT_BATCH_TOKENS


# ---------------------------------------------------------------------------------------------- baselines


def _token_baseline(attr: str) -> Callable[[Any], int]:
    def pick(tokenizer: Any) -> int:
        token_id = getattr(tokenizer, attr, None)
        if token_id is None:
            raise UserError(f"this tokenizer has no {attr.removesuffix('_token_id')} token; choose another baseline")
        return int(token_id)

    return pick


def _neutral_token(tokenizer: Any) -> int:
    ids = tokenizer(" ", add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise UserError("this tokenizer has no single-token space for the neutral baseline; choose another")
    return int(ids[0])


# A baseline replaces a prompt token's embedding: by a token's embedding, or (None) by the zero vector.
BASELINES: dict[str, Callable[[Any], int | None]] = {
    "pad": _token_baseline("pad_token_id"),
    "eos": _token_baseline("eos_token_id"),
    "unk": _token_baseline("unk_token_id"),
    "neutral": _neutral_token,
    "zero": lambda tokenizer: None,
}


# ---------------------------------------------------------------------------------------------- result


@dataclass
class AttributionResult:
    """Attribution maps per side (rows: answer tokens/words or the whole answer; columns: prompt tokens/words,
    then the answer's own earlier tokens with `include_answer_prefix`) and Δ.

    `convergence_delta[side][row]` (integrated gradients only) is Σ attributions − (F(input) − F(baseline)),
    the quadrature error of the completeness axiom; `logprob` and `baseline_logprob` are F at both ends.
    """

    method: str
    prompt: str
    answer: str
    chat: bool
    settings: AttributionSettings
    prompt_tokens: list[str]
    answer_tokens: list[str]
    base: list[list[float]]
    unlearned: list[list[float]]
    delta: list[list[float]]
    logprob: dict[str, list[float]]
    baseline_logprob: dict[str, list[float]]
    convergence_delta: dict[str, list[float]] | None = None
    contrast_exact: bool = False  # True when Δ was attributed itself (perturbation methods)

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per (answer row, prompt feature) with the base, unlearned and Δ attributions."""
        records = [
            {
                "row": r,
                "answer_token": answer,
                "feature": f,
                "prompt_token": token,
                "base": self.base[r][f],
                "unlearned": self.unlearned[r][f],
                "delta": self.delta[r][f],
            }
            for r, answer in enumerate(self.answer_tokens)
            for f, token in enumerate(self.prompt_tokens)
        ]
        columns = ["row", "answer_token", "feature", "prompt_token", "base", "unlearned", "delta"]
        return pd.DataFrame(records, columns=columns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributionResult:
        fields_ = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields_["settings"] = AttributionSettings(**data["settings"])
        return cls(**fields_)

    @classmethod
    def from_json(cls, text: str) -> AttributionResult:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------- the problem


def word_groups(texts: Sequence[str], special: Sequence[bool]) -> list[list[int]]:
    """Token indices of each word: a word starts at leading whitespace, a punctuation boundary or a special token."""
    groups: list[list[int]] = []
    for i, text in enumerate(texts):
        starts = (
            not groups
            or special[i]
            or special[i - 1]
            or text[:1].isspace()
            or _is_punctuation(text) != _is_punctuation(texts[i - 1])
        )
        if starts:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not any(ch.isalnum() for ch in stripped)


def _group_matrix(groups: list[list[int]], size: int) -> torch.Tensor:
    """[size, len(groups)] one-hot: multiplying by it sums members into their group."""
    matrix = torch.zeros(size, len(groups))
    for g, members in enumerate(groups):
        matrix[members, g] = 1.0
    return matrix


@dataclass
class _Problem:
    """The tokenised prompt + answer: which positions are attributed, grouped into features; answer rows."""

    ids: torch.Tensor  # [L] prompt then answer
    prompt_len: int
    positions: torch.Tensor  # [A] attributed positions; every other input position is fed unchanged
    feature_groups: list[list[int]]  # indices into `positions` of each feature
    row_groups: list[list[int]]  # answer positions (0-based within the answer) of each row
    feature_labels: list[str]
    row_labels: list[str]

    @property
    def answer_ids(self) -> torch.Tensor:
        return self.ids[self.prompt_len :]

    def feature_matrix(self) -> torch.Tensor:
        return _group_matrix(self.feature_groups, len(self.positions))

    def row_matrix(self) -> torch.Tensor:
        return _group_matrix(self.row_groups, len(self.answer_ids))

    def feature_of_position(self) -> torch.Tensor:
        index = torch.empty(len(self.positions), dtype=torch.long)
        for f, members in enumerate(self.feature_groups):
            index[members] = f
        return index


def _build_problem(pair: ModelPair, prompt: str, answer: str, chat: bool, settings: AttributionSettings) -> _Problem:
    if settings.granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {settings.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
    if answer is None or not answer.strip():
        raise UserError("the answer is empty: attribution needs an answer whose log-probability it explains")
    tokenizer = pair.tokenizer
    encoded = encode(tokenizer, prompt, answer, chat, pair.context_length)
    if encoded.truncated:
        raise UserError(
            f"the prompt and answer do not fit the model's context of {pair.context_length} tokens; "
            "shorten the prompt (attribution needs every prompt token)"
        )
    ids = encoded.input_ids
    texts = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    specials = set(getattr(tokenizer, "all_special_ids", None) or []) | {
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    }
    special = [i in specials for i in ids]
    p, n = encoded.score_from, len(ids) - encoded.score_from
    context_end = len(ids) - 1 if settings.include_answer_prefix else p
    # Words never straddle the prompt/answer boundary; special tokens (BOS, chat markers) stay as they are.
    groups = [
        [start + i for i in group]
        for start, stop in ((0, p), (p, context_end))
        for group in _groups(texts[start:stop], special[start:stop], settings.granularity)
        if not (settings.keep_special and special[start + group[0]])
    ]
    positions = [i for group in groups for i in group]
    index = {position: j for j, position in enumerate(positions)}
    if not positions:
        raise UserError("the prompt has no token to attribute to (only special tokens)")
    rows = _groups(texts[p:], special[p:], settings.granularity) if settings.per_token else [list(range(n))]
    return _Problem(
        ids=torch.tensor(ids, device=pair.device),
        prompt_len=p,
        positions=torch.tensor(positions, device=pair.device),
        feature_groups=[[index[i] for i in group] for group in groups],
        row_groups=rows,
        feature_labels=["".join(texts[i] for i in group) for group in groups],
        row_labels=["".join(texts[p + i] for i in group) for group in rows],
    )


def _groups(texts: Sequence[str], special: Sequence[bool], granularity: str) -> list[list[int]]:
    return word_groups(texts, special) if granularity == "word" else [[i] for i in range(len(texts))]


@dataclass
class _SideInputs:
    """One side's input embeddings (fed as they are except at the attributed positions) and those positions' own
    embeddings and baseline."""

    full: torch.Tensor  # [L - 1, H]
    context: torch.Tensor  # [A, H]
    baseline: torch.Tensor  # [A, H]


def _side_inputs(model: torch.nn.Module, problem: _Problem, baseline_id: int | None) -> _SideInputs:
    embed = model.get_input_embeddings()
    with torch.no_grad():
        full = embed(problem.ids[:-1]).detach()
        context = full[problem.positions]
        if baseline_id is None:
            baseline = torch.zeros_like(context)
        else:
            baseline = embed(torch.full_like(problem.positions, baseline_id)).detach()
    return _SideInputs(full, context, baseline)


def _answer_logprobs(
    model: torch.nn.Module, inputs: _SideInputs, problem: _Problem, context_embeds: torch.Tensor
) -> torch.Tensor:
    """Log-prob of each answer token [B, n] given the attributed positions' embeddings [B, A, H]."""
    batch = context_embeds.shape[0]
    full = inputs.full.unsqueeze(0).expand(batch, -1, -1).to(context_embeds.dtype)
    embeds = full.index_copy(1, problem.positions, context_embeds)
    n = len(problem.answer_ids)
    try:
        logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=n).logits
    except TypeError:  # an architecture without logits_to_keep
        logits = model(inputs_embeds=embeds, use_cache=False).logits
    logp = torch.log_softmax(logits[:, -n:].float(), dim=-1)
    return logp.gather(-1, problem.answer_ids.view(1, n, 1).expand(batch, n, 1)).squeeze(-1)


def _row_logprobs(
    model: torch.nn.Module, inputs: _SideInputs, problem: _Problem, context_embeds: torch.Tensor
) -> torch.Tensor:
    """Log-prob of each answer row [B, R]: sums of its tokens' log-probs."""
    rows = problem.row_matrix().to(context_embeds.device)
    return _answer_logprobs(model, inputs, problem, context_embeds) @ rows


# ---------------------------------------------------------------------------------------------- methods


@dataclass
class _Maps:
    """Token- or feature-level maps [R, F] per side, Δ, and optional per-row completeness error per side."""

    base: torch.Tensor
    unlearned: torch.Tensor
    delta: torch.Tensor
    convergence_delta: dict[str, torch.Tensor] | None = None


@dataclass
class _Run:
    """Everything a method needs: the pair, the problem, each side's inputs, the settings."""

    pair: ModelPair
    problem: _Problem
    inputs: dict[str, _SideInputs]
    settings: AttributionSettings
    batch_tokens: int
    endpoints: dict[str, torch.Tensor] = field(default_factory=dict)  # side -> [2, R]: F(input), F(baseline)


def _settings_options(*names: str) -> tuple[Option, ...]:
    """The AttributionSettings fields a method reads, as its declared options (one place for defaults and bounds)."""
    return options_of(AttributionSettings, *names)


SETTINGS_OPTIONS = {spec.name: spec for spec in options_of(AttributionSettings)}  # every method's, by name


class AttributionMethod(ABC):
    """An attribution method; subclasses register under `name` and the CLI and dashboard list the registry.

    `option_specs` are the settings the method reads (the dashboard draws a control for each)."""

    name: ClassVar[str]
    description: ClassVar[str]
    contrast_exact: ClassVar[bool]
    option_specs: ClassVar[tuple[Option, ...]] = ()

    @abstractmethod
    def maps(self, run: _Run) -> _Maps: ...


ATTRIBUTION_METHODS: Registry[AttributionMethod] = Registry("attribution method", instantiate=True)
_register = ATTRIBUTION_METHODS.register  # the decorator every method below is added with


def _shared_forward_gradients(score: Callable[[torch.Tensor], torch.Tensor], n_rows: int) -> Callable[..., tuple]:
    """A captum gradient function for inputs that are `n_rows` copies of each point, copy r targeting answer row r.

    captum expands the IG batch to steps × rows; the copies are identical, so one forward per step gives every
    row's output and one backward with batched cotangents (one-hot per row) gives every row's gradient.
    """

    def gradient_func(
        forward_fn: Any, inputs: tuple[torch.Tensor, ...], target_ind: Any = None, additional_forward_args: Any = None
    ) -> tuple[torch.Tensor, ...]:
        (expanded,) = inputs
        points = expanded.detach().unflatten(0, (-1, n_rows))[:, 0].requires_grad_(True)
        with torch.enable_grad():
            out = score(points)  # [k, R]
            if n_rows == 1:
                (grads,) = torch.autograd.grad(out.sum(), points)
                return (grads,)
            eye = torch.eye(n_rows, device=out.device, dtype=out.dtype)
            cotangents = eye.unsqueeze(1).expand(n_rows, out.shape[0], n_rows)
            (grads,) = torch.autograd.grad(out, points, cotangents, is_grads_batched=True)  # [R, k, P, H]
        return (grads.transpose(0, 1).flatten(0, 1),)

    return gradient_func


class _GradientMethod(AttributionMethod):
    """Attributes each side's row log-probs to its prompt embeddings; Δ is the difference of the two maps."""

    contrast_exact = False

    def maps(self, run: _Run) -> _Maps:
        token_maps, deltas = {}, {}
        for side in SIDES:
            with _side_score(run, side) as score:
                token_maps[side], deltas[side] = self.side_map(run, side, score)
        features = run.problem.feature_matrix().to(token_maps["base"].device)
        base, unlearned = token_maps["base"] @ features, token_maps["unlearned"] @ features
        convergence = None if deltas["base"] is None else deltas
        return _Maps(base, unlearned, unlearned - base, convergence)

    @abstractmethod
    def side_map(
        self, run: _Run, side: str, score: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The token-level map [R, P] of one side, and its per-row convergence delta (None if not defined)."""


@contextlib.contextmanager
def _side_score(run: _Run, side: str) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Hold one side's lock; yield its row-score function F(prompt_embeds [B, P, H]) -> [B, R]."""
    with run.pair.use(side) as model:
        inputs, problem = run.inputs[side], run.problem
        yield lambda embeds: _row_logprobs(model, inputs, problem, embeds)


@_register
class IntegratedGradients(_GradientMethod):
    name = "integrated_gradients"
    description = "layer integrated gradients on the input embeddings (captum), convergence delta reported"
    option_specs = _settings_options("baseline", "n_steps", "method")

    def side_map(self, run: _Run, side: str, score: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        from captum.attr import IntegratedGradients as CaptumIG

        inputs, settings = run.inputs[side], run.settings
        n_rows = len(run.problem.row_groups)
        ig = CaptumIG(score)
        ig.gradient_func = _shared_forward_gradients(score, n_rows)
        # the batched backward holds one activation gradient per row: budget steps × length × rows
        steps_per_batch = max(1, run.batch_tokens // (len(run.problem.ids) * n_rows))
        attributions = ig.attribute(
            inputs.context.unsqueeze(0).expand(n_rows, -1, -1),
            baselines=inputs.baseline.unsqueeze(0).expand(n_rows, -1, -1),
            n_steps=settings.n_steps,
            method=settings.method,
            internal_batch_size=steps_per_batch * n_rows,
        )
        token_map = attributions.sum(-1)  # [R, P]
        change = run.endpoints[side][0] - run.endpoints[side][1]
        return token_map, token_map.sum(-1) - change


@_register
class InputXGradient(_GradientMethod):
    name = "input_x_gradient"
    description = "gradient × input embedding (captum), one forward and one batched backward per side"

    def side_map(self, run: _Run, side: str, score: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
        from captum.attr import InputXGradient as CaptumIxG

        n_rows = len(run.problem.row_groups)
        method = CaptumIxG(score)
        method.gradient_func = _shared_forward_gradients(score, n_rows)
        context = run.inputs[side].context.unsqueeze(0).expand(n_rows, -1, -1).clone().requires_grad_(True)
        attributions = method.attribute(context)
        return attributions.sum(-1), None


class _PerturbationMethod(AttributionMethod):
    """Perturbs prompt features (replaced by the baseline) and runs each perturbation through both models.

    The forward returns [base rows, unlearned rows, Δ rows] per perturbation, so captum attributes Δ itself with
    the very perturbations (and, for Shapley, the very feature orders) it uses for each side.
    """

    contrast_exact = True
    option_specs = _settings_options("baseline")

    def maps(self, run: _Run) -> _Maps:
        problem = run.problem
        n_rows, n_features = len(problem.row_groups), len(problem.feature_groups)
        positions = problem.feature_of_position().to(run.pair.device)

        def forward(present: torch.Tensor) -> torch.Tensor:
            keep = present[:, positions].unsqueeze(-1) == 1  # [B, P, 1]: keep the token, else put the baseline
            rows = {}
            for side in SIDES:
                inputs = run.inputs[side]
                embeds = torch.where(keep, inputs.context, inputs.baseline)
                with run.pair.use(side) as model, torch.no_grad():
                    rows[side] = _row_logprobs(model, inputs, problem, embeds)
            return torch.cat([rows["base"], rows["unlearned"], rows["unlearned"] - rows["base"]], dim=1)

        per_eval = max(1, run.batch_tokens // len(problem.ids))
        present = torch.ones(1, n_features, device=run.pair.device)
        attributions = self.run_captum(forward, present, per_eval, run.settings).reshape(3, n_rows, n_features)
        return _Maps(attributions[0], attributions[1], attributions[2])

    @abstractmethod
    def run_captum(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        present: torch.Tensor,
        per_eval: int,
        settings: AttributionSettings,
    ) -> torch.Tensor:
        """captum attributions of every forward output [3R, F] (features present = 1, replaced = 0)."""


@_register
class FeatureAblation(_PerturbationMethod):
    name = "feature_ablation"
    description = "replace one prompt token/word at a time by the baseline; Δ attributed exactly"

    def run_captum(
        self, forward: Callable, present: torch.Tensor, per_eval: int, settings: AttributionSettings
    ) -> torch.Tensor:
        from captum.attr import FeatureAblation as CaptumAblation

        return CaptumAblation(forward).attribute(present, baselines=0.0, perturbations_per_eval=per_eval)


@_register
class Occlusion(_PerturbationMethod):
    name = "occlusion"
    description = "replace a sliding window of prompt tokens/words by the baseline; Δ attributed exactly"
    option_specs = _settings_options("baseline", "window")

    def run_captum(
        self, forward: Callable, present: torch.Tensor, per_eval: int, settings: AttributionSettings
    ) -> torch.Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        window = max(1, min(settings.window, present.shape[1]))
        return CaptumOcclusion(forward).attribute(
            present, sliding_window_shapes=(window,), strides=(1,), baselines=0.0, perturbations_per_eval=per_eval
        )


@_register
class ShapleySampling(_PerturbationMethod):
    name = "shapley_sampling"
    description = "Shapley value sampling over random feature orders (seeded); Δ attributed exactly"
    option_specs = _settings_options("baseline", "n_samples", "seed")

    def run_captum(
        self, forward: Callable, present: torch.Tensor, per_eval: int, settings: AttributionSettings
    ) -> torch.Tensor:
        from captum.attr import ShapleyValueSampling

        with _SEED_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            return ShapleyValueSampling(forward).attribute(
                present, baselines=0.0, n_samples=settings.n_samples, perturbations_per_eval=per_eval
            )


# ---------------------------------------------------------------------------------------------- entry point


def _ensure_fits(pair: ModelPair, problem: _Problem, method: str, batch_tokens: int) -> None:
    """Refuse a run whose batches would not fit. A gradient batch keeps every layer's activations of its points
    (one forward serves every answer row), and the batched backward holds about one more copy per answer row; a
    perturbation batch is a plain forward pass. Both hold the answer logits of each sequence. Measured on
    SmolLM2-135M on a CPU, 110 tokens with 9 answer rows: estimate 0.49 GiB, peak growth 0.91 GiB, of which about
    0.3 GiB is the run's fixed overhead (as in the runs of `saved_for_backward`)."""
    with pair.use("base") as model:
        shape = model_shape(model)
    length, rows = len(problem.ids), len(problem.row_groups)
    itemsize = torch.empty((), dtype=pair.dtype).element_size()
    if isinstance(ATTRIBUTION_METHODS.get(method), _GradientMethod):
        points = max(1, batch_tokens // (length * rows)) if method == IntegratedGradients.name else 1
        kept = saved_for_backward(shape, points, length, itemsize)
        if rows > 1:
            kept += activation_bytes(points * rows, length, shape.hidden, shape.layers, itemsize, 1)
            kept += attention_bytes(points * rows, length, shape.heads, shape.layers, itemsize, 1)
    else:
        points = max(1, batch_tokens // length)
        kept = activation_bytes(points, length, shape.hidden, 1, itemsize, FORWARD_ACTIVATION_FACTOR)
    logits = points * len(problem.answer_ids) * shape.vocab * (itemsize + 2 * 4)  # logits, float copy, log-softmax
    ensure_fits(kept + logits, pair.device, f"attributing {length} tokens ({points} sequences per batch)")


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
        problem = _build_problem(pair, prompt, answer, chat, settings)
        batch_tokens = settings.batch_tokens or BATCH_TOKENS.get(pair.device.type, DEFAULT_BATCH_TOKENS)
        _ensure_fits(pair, problem, method, batch_tokens)
        run = _Run(pair, problem, {}, settings, batch_tokens)
        for side in SIDES:
            with pair.use(side) as model:
                run.inputs[side] = inputs = _side_inputs(model, problem, baseline_id)
                with torch.no_grad():
                    both_ends = torch.stack([inputs.context, inputs.baseline])
                    run.endpoints[side] = _row_logprobs(model, inputs, problem, both_ends)
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
    )
