"""Unlearning methods, each a loss over a forget batch (and a retain batch), in one registry keyed by name.

The formulas are those of docs/METRICS.md. Plain NLL terms (GradAscent, GradDiff, retain
terms, fine-tuning) are the token mean over the batch's answer tokens, as open-unlearning's HF loss is; NPO and IdK
use the summed log-probability of each answer, SimNPO its per-token average, each then averaged over the items.
Adding a method is adding one class with `@register` (into `UNLEARNING_METHODS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from core.common import Option, Registry, options_of
from core.common.errors import UserError
from core.scoring.encoding import Batch
from core.scoring.forward import selected_logits

if TYPE_CHECKING:
    from core.unlearn.trainer import RunContext


@dataclass
class StepInputs:
    """What one optimisation step sees: collated forget and retain batches and the step's own random generator."""

    step: int
    forget: Batch
    forget_rows: torch.Tensor  # indices of the forget items in the batch (for precomputed reference values)
    retain: Batch | None
    generator: torch.Generator  # seeded by (seed, step): a resumed run draws the same numbers


@dataclass
class StepLoss:
    """The loss to minimise and its named terms (plain floats, for the progress bar and the run log)."""

    total: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class NoOptions:
    """A method without hyper-parameters."""


class UnlearningMethod:
    """A training objective. Subclasses set `name`, `summary`, `Options` and implement `loss`.

    `Options` is a dataclass of the method's hyper-parameters (core.common.option fields); `option_specs`, the
    registry's typed description of them, is derived from it for every subclass."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    option_specs: ClassVar[tuple[Option, ...]] = ()
    uses_retain: ClassVar[bool] = True
    unlearns: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.option_specs = options_of(cls.Options)

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> UnlearningMethod:
        """Build with the given hyper-parameters over the defaults; an option the method lacks, or a value of the
        wrong type or outside its choices or range, is a UserError."""
        known = {spec.name: spec for spec in cls.option_specs}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(
                f"method {cls.name} has no option(s) {', '.join(unknown)}; it takes {', '.join(known) or 'none'}"
            )
        checked = {key: known[key].validate(value, cls.name) for key, value in values.items()}
        return cls(cls.Options(**checked))

    def hyperparameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    @property
    def needs_reference(self) -> bool:
        """True when the loss reads the frozen model from before training (π_ref)."""
        return False

    def trainable(self, name: str) -> bool:
        """Whether the parameter called `name` is trained (all of the trainee's candidates by default)."""
        return True

    def check(self, model: torch.nn.Module) -> None:
        """Raise UserError when the method cannot run on this model (before anything is trained)."""

    def prepare(self, run: RunContext) -> None:
        """Work done once before the first step (e.g. reference log-probs, which never change)."""

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        raise NotImplementedError


UNLEARNING_METHODS: Registry[type[UnlearningMethod]] = Registry("unlearning method")
register = UNLEARNING_METHODS.register  # the decorator every method below is added with


def get_method(name: str) -> type[UnlearningMethod]:
    """The method called `name`, whatever its case and surrounding spaces (as typed on a command line)."""
    return UNLEARNING_METHODS.get(name.strip().lower())


def token_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """−log p of each scored (answer) token, [N] in the row-major order of `batch.targets`."""
    return F.cross_entropy(selected_logits(model, batch).float(), batch.targets, reduction="none")


def mean_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The token-mean NLL of the batch's answers (what an HF causal-LM loss is)."""
    return token_nll(model, batch).mean()


def per_item(batch: Batch, values: torch.Tensor) -> torch.Tensor:
    """Sum token values [N] into one value per row [B]."""
    rows = batch.predict_mask.nonzero()[:, 0]
    return torch.zeros(batch.input_ids.shape[0], dtype=values.dtype, device=values.device).index_add(0, rows, values)


def answer_lengths(batch: Batch) -> torch.Tensor:
    return batch.predict_mask.sum(dim=1).float()


def sequence_logprob(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """log π(a|q) per row: the answer tokens' log-probabilities summed."""
    return -per_item(batch, token_nll(model, batch))


def retain_nll(run: RunContext, inputs: StepInputs) -> torch.Tensor:
    if inputs.retain is None:
        raise UserError("this method needs a retain set")
    return mean_nll(run.model, inputs.retain)


def with_retain_nll(
    run: RunContext, inputs: StepInputs, total: torch.Tensor, terms: dict[str, float], alpha: float
) -> StepLoss:
    """The forget objective plus α·NLL_retain (left out when α is 0), with the retain term logged."""
    if alpha:
        retain = retain_nll(run, inputs)
        total = total + alpha * retain
        terms["retain_nll"] = retain.item()
    return StepLoss(total, terms)


def logsigmoid_loss(
    run: RunContext, inputs: StepInputs, options: Any, margin: torch.Tensor, term: str, **extra: float
) -> StepLoss:
    """The NPO/SimNPO/IdK objective: γ·mean(−(2/β)·logσ(margin)) on forget, logged as `term` (then `extra`), plus
    α·NLL_retain; γ, β and α are the method's `options`."""
    forget = (-2.0 / options.beta * F.logsigmoid(margin)).mean()
    return with_retain_nll(run, inputs, options.gamma * forget, {term: forget.item(), **extra}, options.alpha)


class _StopForward(Exception):
    """Raised by a hook once the wanted layer has run: the rest of the network is not computed."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks: the layer view's layouts (core.analyses.lens.architecture), else the
    ModuleList as long as config.num_hidden_layers; a UserError naming the architecture where neither is found."""
    from core.analyses.lens.architecture import decoder_layers as known_layers

    with contextlib.suppress(UserError):
        return known_layers(model)
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"could not find the decoder layers of {type(model).__name__}")


# The MLP's output projection under each family's name: RMU's default "mlp.down_proj" (Llama, Mistral, Qwen2, Gemma,
# OLMo) means the same matrix in GPT-2 (mlp.c_proj), Phi (mlp.fc2), OPT (fc2) and GPT-NeoX (mlp.dense_4h_to_h).
MLP_OUTPUT_NAMES = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "fc2", "mlp.dense_4h_to_h")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_activations(model: torch.nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    """The output of decoder layer `layer` at the positions that predict answer tokens, [N, hidden]."""
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0][batch.predict_mask].float()


def reference_values(
    run: RunContext, batch: Batch, compute: Callable[[torch.nn.Module, Batch], torch.Tensor]
) -> torch.Tensor:
    """`compute` under the frozen reference model, without gradients."""
    with run.reference() as reference, torch.no_grad(), run.autocast():
        return compute(reference, batch)


@register
class GradAscent(UnlearningMethod):
    name = "gradascent"
    summary = "gradient ascent on the forget answers: −NLL_forget"
    uses_retain = False

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        forget = mean_nll(run.model, inputs.forget)
        return StepLoss(-forget, {"forget_nll": forget.item()})


@dataclass
class GradDiffOptions:
    gamma: float = field(default=1.0, metadata={"help": "weight of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain term"})
    retain_loss: str = field(
        default="nll", metadata={"help": "retain term: nll, or kl = KL(π_ref‖π)", "choices": ("nll", "kl")}
    )


@register
class GradDiff(UnlearningMethod):
    name = "graddiff"
    summary = "γ·(−NLL_forget) + α·NLL_retain (variant retain_loss=kl: α·KL(π_ref‖π) on retain)"
    Options = GradDiffOptions

    @property
    def needs_reference(self) -> bool:
        return self.options.retain_loss == "kl"

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        forget = mean_nll(run.model, inputs.forget)
        retain = retain_kl(run, inputs) if self.options.retain_loss == "kl" else retain_nll(run, inputs)
        total = -self.options.gamma * forget + self.options.alpha * retain
        return StepLoss(total, {"forget_nll": forget.item(), f"retain_{self.options.retain_loss}": retain.item()})


def retain_kl(run: RunContext, inputs: StepInputs) -> torch.Tensor:
    """KL(π_ref‖π) of the next-token distributions, averaged over the retain answer positions."""
    if inputs.retain is None:
        raise UserError("this method needs a retain set")
    reference = reference_values(run, inputs.retain, lambda m, b: torch.log_softmax(selected_logits(m, b).float(), -1))
    current = torch.log_softmax(selected_logits(run.model, inputs.retain).float(), dim=-1)
    return (reference.exp() * (reference - current)).sum(dim=-1).mean()


@dataclass
class NPOOptions:
    beta: float = field(default=0.1, metadata={"help": "NPO/SimNPO/IdK temperature β"})
    gamma: float = field(default=1.0, metadata={"help": "weight of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain NLL term (0: none)"})


class _ReferenceLogprobs(UnlearningMethod):
    """Precomputes log π_ref(a|q) of every forget item once (π_ref is frozen)."""

    reference_logp: torch.Tensor

    @property
    def needs_reference(self) -> bool:
        return True

    def prepare(self, run: RunContext) -> None:
        parts = [reference_values(run, batch, sequence_logprob) for batch in run.forget_batches()]
        self.reference_logp = torch.cat(parts)


@register
class NPO(_ReferenceLogprobs):
    name = "npo"
    summary = "γ·(2/β)·log(1 + (π/π_ref)^β) on forget + α·NLL_retain"
    Options = NPOOptions

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        beta = self.options.beta
        log_ratio = sequence_logprob(run.model, inputs.forget) - self.reference_logp[inputs.forget_rows]
        return logsigmoid_loss(run, inputs, self.options, -beta * log_ratio, "npo", log_ratio=log_ratio.mean().item())


@dataclass
class SimNPOOptions:
    beta: float = field(default=4.5, metadata={"help": "NPO/SimNPO/IdK temperature β"})
    delta: float = field(default=0.0, metadata={"help": "SimNPO reward margin δ"})
    gamma: float = field(default=0.125, metadata={"help": "weight of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain NLL term (0: none)"})


@register
class SimNPO(UnlearningMethod):
    name = "simnpo"
    summary = "γ·(−(2/β)·logσ(−(β/|a|)·log π(a|q) − β·δ)) on forget + α·NLL_retain (reference-free)"
    Options = SimNPOOptions

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        beta, delta = self.options.beta, self.options.delta
        normalised = sequence_logprob(run.model, inputs.forget) / answer_lengths(inputs.forget)
        return logsigmoid_loss(run, inputs, self.options, -beta * normalised - beta * delta, "simnpo")


@register
class IdK(_ReferenceLogprobs):
    name = "idk"
    summary = "DPO toward a random refusal: −(2/β)·logσ(β·[log π/π_ref(idk) − log π/π_ref(a)]) + α·NLL_retain"
    Options = NPOOptions

    def prepare(self, run: RunContext) -> None:
        if not run.refusals:
            raise UserError("method idk needs refusal strings (an idk.jsonl of one refusal per line)")
        super().prepare(run)

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        beta = self.options.beta
        picks = torch.randint(len(run.refusals), (len(inputs.forget_rows),), generator=inputs.generator)
        refusal_rows = [
            run.encode(run.forget_items[row].question, run.refusals[pick])
            for row, pick in zip(inputs.forget_rows.tolist(), picks.tolist(), strict=True)
        ]
        refusals = run.collate(refusal_rows)
        chosen = sequence_logprob(run.model, refusals) - reference_values(run, refusals, sequence_logprob)
        rejected = sequence_logprob(run.model, inputs.forget) - self.reference_logp[inputs.forget_rows]
        return logsigmoid_loss(run, inputs, self.options, beta * (chosen - rejected), "dpo")


@dataclass
class RMUOptions:
    layer: int = field(default=7, metadata={"help": "RMU: the layer ℓ whose output is steered"})
    steering: float = field(default=6.5, metadata={"help": "RMU: steering coefficient c (target c·u)"})
    alpha: float = field(default=1200.0, metadata={"help": "weight of the retain term"})
    modules: str = field(
        default="mlp.down_proj", metadata={"help": "RMU: comma-separated module names trained in layers ℓ−2..ℓ"}
    )


@register
class RMU(UnlearningMethod):
    name = "rmu"
    summary = "MSE(h_ℓ(forget), c·u) + α·MSE(h_ℓ(retain), h_ℓ^frozen(retain)); only layers ℓ−2..ℓ trained"
    Options = RMUOptions
    direction: torch.Tensor

    @property
    def needs_reference(self) -> bool:
        return True

    def trainable(self, name: str) -> bool:
        match = _LAYER_INDEX.search(name.replace(".base_layer", ""))
        layers = range(max(0, self.options.layer - 2), self.options.layer + 1)
        modules = getattr(self, "_modules", None) or self._named_modules()
        return bool(match) and int(match.group(1)) in layers and any(f".{m}." in name for m in modules)

    def _named_modules(self) -> list[str]:
        return [m.strip() for m in self.options.modules.split(",") if m.strip()]

    def _resolve_modules(self, model: torch.nn.Module) -> list[str]:
        """The option's module names; the default MLP output projection ("mlp.down_proj") is read under the model's
        own name for it (MLP_OUTPUT_NAMES) where the model has no module of that name. A UserError naming the
        architecture and its layer's modules where none of the names is found in layer ℓ."""
        names = self._named_modules()
        layer = decoder_layers(model)[self.options.layer]
        own = {name for name, _ in layer.named_modules()}
        if names == ["mlp.down_proj"] and "mlp.down_proj" not in own:
            names = [next((m for m in MLP_OUTPUT_NAMES if m in own), "mlp.down_proj")]
        if not any(m in own for m in names):
            listed = ", ".join(n for n, m in layer.named_modules() if n and not list(m.children()))
            raise UserError(
                f"rmu: no module {', '.join(names)} in layer {self.options.layer} of {type(model).__name__}; "
                f"its modules include {listed[:300]}"
            )
        return names

    @staticmethod
    def random_direction(hidden_size: int, seed: int) -> torch.Tensor:
        """u: torch.rand normalised to unit length (as WMDP draws it, so it lies in the positive orthant)."""
        generator = torch.Generator().manual_seed(seed)
        u = torch.rand(hidden_size, generator=generator)
        return u / u.norm()

    def check(self, model: torch.nn.Module) -> None:
        layers = len(decoder_layers(model))
        if not 0 <= self.options.layer < layers:
            raise UserError(f"rmu layer {self.options.layer} is outside the model's 0..{layers - 1}")
        self._modules = self._resolve_modules(model)

    def prepare(self, run: RunContext) -> None:
        self.direction = self.random_direction(_hidden_size(run.model), run.seed).to(run.device)

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        if inputs.retain is None:
            raise UserError("this method needs a retain set")
        layer = self.options.layer
        forget_h = layer_activations(run.model, inputs.forget, layer)
        forget = F.mse_loss(forget_h, (self.options.steering * self.direction).expand_as(forget_h))
        frozen = reference_values(run, inputs.retain, lambda m, b: layer_activations(m, b, layer))
        retain = F.mse_loss(layer_activations(run.model, inputs.retain, layer), frozen)
        terms = {"forget_mse": forget.item(), "retain_mse": retain.item()}
        return StepLoss(forget + self.options.alpha * retain, terms)


@register
class FineTune(UnlearningMethod):
    """Not unlearning: plain NLL on the forget slot's items (builds the demo target and oracle, bench baseline)."""

    name = "finetune"
    summary = "NLL on the given items (learning, not unlearning: builds targets and oracles)"
    uses_retain = False
    unlearns = False

    def loss(self, run: RunContext, inputs: StepInputs) -> StepLoss:
        nll = mean_nll(run.model, inputs.forget)
        return StepLoss(nll, {"nll": nll.item()})


def _hidden_size(model: torch.nn.Module) -> int:
    """The residual stream's width (config.hidden_size; n_embd for GPT-2)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "hidden_size", None) or config.n_embd)
