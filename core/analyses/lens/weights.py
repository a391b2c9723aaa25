"""Weight-change map: ‖ΔW‖/‖W‖ per parameter and layer; LoRA adapters are read as B·A·scaling without merging."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from core.common.errors import UserError
from core.common.serial import JsonResult
from core.models.offload import materialize
from core.models.pair import SIDES, ModelPair

_LAYER_NAME = re.compile(r"^(?:.*\.)?(?:layers|h|blocks|layer)\.(\d+)\.(.+)$")


@dataclass
class WeightChange:
    """One parameter: ‖W_unlearned − W_base‖_F / ‖W_base‖_F, with the module path and layer it belongs to."""

    name: str
    module: str
    layer: int | None
    relative_change: float
    delta_norm: float
    weight_norm: float
    source: str  # "adapter" where LoRA terms take part, else "weights"


@dataclass
class WeightChangeResult(JsonResult):
    """‖ΔW‖/‖W‖ for every parameter of the pair."""

    changes: list[WeightChange]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.changes], columns=list(WeightChange.__dataclass_fields__))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightChangeResult:
        return cls([WeightChange(**c) for c in data["changes"]])


@dataclass
class _Effective:
    """A parameter as one side sees it: the stored tensor plus its active LoRA terms as (U, V), ΔW = U·V."""

    weight: torch.Tensor
    terms: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _lora_terms(module: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The active adapters of a PEFT LoRA layer as low-rank factors in the stored weight's orientation."""
    if module.disable_adapters or module.merged:
        return []
    terms = []
    for key in module.active_adapters:
        if key not in module.lora_A:
            continue
        if key in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(key):
            raise UserError(f"adapter {key!r} uses a LoRA variant (DoRA, LoRA bias): the weight map reads plain LoRA")
        a, b = module.lora_A[key].weight, module.lora_B[key].weight
        if a.dim() != 2:
            raise UserError(f"adapter {key!r} has LoRA on a non-linear layer; the weight map reads linear layers only")
        scaled_b = b * module.scaling[key]
        terms.append((a.T, scaled_b.T) if getattr(module, "fan_in_fan_out", False) else (scaled_b, a))
    return terms


def _side_parameters(model: torch.nn.Module) -> dict[str, _Effective]:
    """Every parameter by its plain name (PEFT's `.base_layer` dropped), plus the LoRA terms of LoRA layers."""
    params = {
        name.replace(".base_layer", ""): _Effective(tensor)
        for name, tensor in model.named_parameters()
        if ".lora_" not in name
    }
    for path, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            params[f"{path}.weight"].terms = _lora_terms(module)
    return params


def _resident(model: torch.nn.Module, name: str, effective: _Effective) -> _Effective:
    """`effective` with its weight in memory (an offloaded parameter sits on the meta device between passes)."""
    if effective.weight.device.type != "meta":
        return effective
    return _Effective(materialize(model, name, effective.weight), effective.terms)


def _gram_norm_sq(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """‖U·V‖_F² from r×r Gram matrices: tr(UᵀU · VVᵀ); the product is never formed."""
    return ((u.T @ u) * (v @ v.T)).sum()


def _factors(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ U_i·V_i as one product U·V (float64)."""
    return torch.cat([u for u, _ in terms], 1).double(), torch.cat([v for _, v in terms], 0).double()


def _change(base: _Effective, unlearned: _Effective) -> tuple[float, float, str]:
    """(‖ΔW‖, ‖W_base‖, source) for one parameter, accumulated in float64."""
    w = base.weight
    weight_sq = torch.linalg.vector_norm(w, dtype=torch.float64).square()
    if base.terms:
        ub, vb = _factors(base.terms)
        weight_sq = weight_sq + 2 * (ub * (w.double() @ vb.T)).sum() + _gram_norm_sq(ub, vb)
    weight_norm = float(weight_sq.clamp_min(0).sqrt())
    low_rank = unlearned.terms + [(-u, v) for u, v in base.terms]
    source = "adapter" if low_rank else "weights"
    if unlearned.weight.data_ptr() != w.data_ptr():
        delta = unlearned.weight - w
        for u, v in low_rank:
            delta = delta + u @ v
        return float(torch.linalg.vector_norm(delta, dtype=torch.float64)), weight_norm, source
    if not low_rank:
        return 0.0, weight_norm, source
    return float(_gram_norm_sq(*_factors(low_rank)).clamp_min(0).sqrt()), weight_norm, source


def weight_change(pair: ModelPair) -> WeightChangeResult:
    """‖ΔW‖/‖W‖ per parameter between the two sides; LoRA sides contribute B·A·scaling, never a merged model. A
    tensor the two sides share (one storage: core.models.sharing) is unchanged and costs nothing; an offloaded
    one is read back from its offload map one parameter at a time."""
    sides, models = {}, {}
    for side in SIDES:
        with pair.use(side) as model:
            sides[side], models[side] = _side_parameters(model), model
    base, unlearned = sides["base"], sides["unlearned"]
    if base.keys() != unlearned.keys():
        only_base, only_unlearned = sorted(base.keys() - unlearned.keys()), sorted(unlearned.keys() - base.keys())
        raise UserError(
            f"the two models have different parameters (only in base: {only_base[:3]}; only in "
            f"unlearned: {only_unlearned[:3]}): weights cannot be compared"
        )
    changes = []
    with torch.no_grad():
        for name, b in base.items():
            u = unlearned[name]
            b, u = (_resident(models[side], name, e) for side, e in (("base", b), ("unlearned", u)))
            if u.weight.shape != b.weight.shape:
                raise UserError(
                    f"{name} has shape {tuple(b.weight.shape)} in base, {tuple(u.weight.shape)} "
                    "in unlearned: weights cannot be compared"
                )
            delta, norm, source = _change(b, u)
            match = _LAYER_NAME.match(name)
            changes.append(
                WeightChange(
                    name=name,
                    module=match.group(2) if match else name,
                    layer=int(match.group(1)) if match else None,
                    relative_change=delta / norm if norm > 0 else float(delta > 0),
                    delta_norm=delta,
                    weight_norm=norm,
                    source=source,
                )
            )
    return WeightChangeResult(changes)
