"""The layer view: where in the network the answer appears and disappears, and what unlearning changed per layer.

- Logit lens: the residual stream after every layer, read through the final norm and the unembedding, gives each
  answer token's probability and rank per layer for both models (`logit_lens`, `hidden_knowledge_score`).
- Hidden-state drift: per layer, cosine similarity and norm change between base and unlearned activations,
  averaged over a forget set and a retain set (RMU's own diagnostic; `hidden_state_drift`).
- Weight-change map: ‖ΔW‖/‖W‖ per parameter and layer; LoRA adapters are read as B·A·scaling without merging
  (`weight_change`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from core.analyses.probe import collate, encode
from core.common.errors import UserError
from core.common.limits import (
    FORWARD_ACTIVATION_FACTOR,
    MAX_BATCH_SIZE,
    MAX_DRIFT_ITEMS,
    activation_bytes,
    check_range,
    ensure_fits,
    model_shape,
)
from core.data.examples import Example, demo_examples
from core.data.qa import load_qa_dataset
from core.models.pair import SIDES, ModelPair

log = logging.getLogger(__name__)

LENS_CHUNK_ELEMENTS = 1 << 25  # logits per lens chunk (layers × answer tokens × vocabulary): bounds memory

# ---------------------------------------------------------------------------------------------- architecture

# (decoder layers, final norm) attribute paths, per family; the unembedding is the model's output embeddings.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama-style": ("model.layers", "model.norm"),  # Llama, Mistral, Qwen, Gemma, SmolLM, Phi-3, OLMo …
    "gpt2-style": ("transformer.h", "transformer.ln_f"),
    "gpt-neox-style": ("gpt_neox.layers", "gpt_neox.final_layer_norm"),
}


def _lookup(model: torch.nn.Module, path: str) -> Any:
    for name in path.split("."):
        model = getattr(model, name, None)
        if model is None:
            return None
    return model


def _architecture(model: torch.nn.Module) -> tuple[str, str]:
    for paths in ARCHITECTURES.values():
        if all(_lookup(model, path) is not None for path in paths):
            return paths
    known = "; ".join(f"{name} ({', '.join(paths)})" for name, paths in ARCHITECTURES.items())
    raise UserError(f"the layer view does not know the layout of {type(model).__name__}; it reads {known}")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks, in order."""
    return _lookup(model, _architecture(model)[0])


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm applied to the last residual stream before the unembedding."""
    return _lookup(model, _architecture(model)[1])


def unembedding(model: torch.nn.Module) -> torch.nn.Module:
    """The output projection from the residual stream to vocabulary logits."""
    _architecture(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UserError(f"{type(model).__name__} has no output embeddings (lm_head) to read the residual stream with")
    return head


@contextlib.contextmanager
def _residual_stream(model: torch.nn.Module, keep: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list]:
    """Record the residual stream entering the first layer and leaving each layer (layers + 1 entries), via keep."""
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []

    def before_first(module: Any, args: tuple, kwargs: dict) -> None:
        states.append(keep(args[0] if args else kwargs["hidden_states"]))

    def after(module: Any, args: tuple, output: Any) -> None:
        states.append(keep(output[0] if isinstance(output, tuple) else output))

    handles = [layers[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    handles += [layer.register_forward_hook(after) for layer in layers]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------- logit lens


@dataclass
class LensSide:
    """One model's lens: [layer][answer token] log-prob and 1-based rank of the answer token, and the top token."""

    logprob: list[list[float]]
    rank: list[list[int]]
    top_token: list[list[str]]


@dataclass
class HiddenKnowledge:
    """How much of the answer the last layers take away: known inside, not said.

    With m(l) the answer's mean token log-prob under the lens at decoder layer l ≥ 1: `peak_layer` = argmax m,
    `peak_logprob` = m(peak_layer), `final_logprob` = m(last layer) (the model's own output), and
    `score` = peak_logprob − final_logprob ≥ 0 (nats per token). A high score for the unlearned model and a low one
    for the base model reads: the answer is still there at `peak_layer` and is suppressed only in the last layers.
    """

    side: str
    peak_layer: int
    peak_logprob: float
    final_logprob: float
    score: float
    peak_mean_rank: float


@dataclass
class LensResult:
    """The logit lens of one prompt + answer under both models. Layer 0 is the embedding stream."""

    prompt: str
    answer: str
    chat: bool
    answer_tokens: list[str]
    layers: list[int]
    base: LensSide
    unlearned: LensSide
    truncated: bool = False

    def hidden_knowledge(self) -> dict[str, HiddenKnowledge]:
        return {side: hidden_knowledge_score(self, side) for side in SIDES}

    def to_frame(self) -> pd.DataFrame:
        """Long table: side, layer, answer position and token, log-prob, prob, rank, the lens's top token."""
        records = []
        for side in SIDES:
            lens: LensSide = getattr(self, side)
            for li, layer in enumerate(self.layers):
                for t, token in enumerate(self.answer_tokens):
                    logprob = lens.logprob[li][t]
                    records.append(
                        {
                            "side": side,
                            "layer": layer,
                            "position": t,
                            "token": token,
                            "logprob": logprob,
                            "prob": math.exp(logprob),
                            "rank": lens.rank[li][t],
                            "top_token": lens.top_token[li][t],
                        }
                    )
        return pd.DataFrame(records)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_knowledge"] = {side: asdict(h) for side, h in self.hidden_knowledge().items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LensResult:
        fields_ = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for side in SIDES:
            fields_[side] = LensSide(**data[side])
        return cls(**fields_)

    @classmethod
    def from_json(cls, text: str) -> LensResult:
        return cls.from_dict(json.loads(text))


def hidden_knowledge_score(result: LensResult, side: str = "unlearned") -> HiddenKnowledge:
    """Summarise one side's lens (definition in HiddenKnowledge); decoder layers only, the embeddings excluded."""
    lens: LensSide = getattr(result, side)
    mean_logprob = torch.tensor(lens.logprob, dtype=torch.float64).mean(dim=1)[1:]
    mean_rank = torch.tensor(lens.rank, dtype=torch.float64).mean(dim=1)[1:]
    peak = int(mean_logprob.argmax())
    final = float(mean_logprob[-1])
    return HiddenKnowledge(
        side=side,
        peak_layer=result.layers[peak + 1],
        peak_logprob=float(mean_logprob[peak]),
        final_logprob=final,
        score=float(mean_logprob[peak]) - final,
        peak_mean_rank=float(mean_rank[peak]),
    )


def logit_lens(pair: ModelPair, prompt: str, answer: str, chat: bool = False) -> LensResult:
    """Probability and rank of each answer token at every layer, for both models (one forward pass per model)."""
    if answer is None or not answer.strip():
        raise UserError("the answer is empty: the lens follows the answer's tokens through the layers")
    row = encode(pair.tokenizer, prompt, answer, chat, pair.context_length)
    ids = torch.tensor([row.input_ids], device=pair.device)
    p, n = row.score_from, len(row.input_ids) - row.score_from
    targets = ids[0, p:]
    sides = {}
    for side in SIDES:
        with pair.use(side) as model, torch.no_grad():
            with _residual_stream(model, lambda h: h[0, p - 1 : p - 1 + n]) as states:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            stream = torch.stack(states)  # [layers + 1, n, H]
            chunk = max(1, LENS_CHUNK_ELEMENTS // (n * unembedding(model).weight.shape[0]))
            parts = [_read_out(model, part, targets) for part in stream.split(chunk)]
        logprob, rank, top = (torch.cat(columns) for columns in zip(*parts, strict=True))
        sides[side] = LensSide(logprob.tolist(), rank.tolist(), [_texts(pair.tokenizer, r) for r in top.tolist()])
    return LensResult(
        prompt=prompt,
        answer=answer,
        chat=chat,
        answer_tokens=_texts(pair.tokenizer, targets.tolist()),
        layers=list(range(len(sides["base"].logprob))),
        base=sides["base"],
        unlearned=sides["unlearned"],
        truncated=row.truncated,
    )


def _read_out(
    model: torch.nn.Module, stream: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final norm + unembedding of [layers, n, H] → target log-prob, target rank and top token, each [layers, n]."""
    logp = torch.log_softmax(unembedding(model)(final_norm(model)(stream)).float(), dim=-1)
    target = logp.gather(-1, targets.view(1, -1, 1).expand(len(stream), -1, 1)).squeeze(-1)
    rank = (logp > target.unsqueeze(-1)).sum(dim=-1) + 1
    return target.cpu(), rank.cpu(), logp.argmax(dim=-1).cpu()


def _texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]


# ---------------------------------------------------------------------------------------------- drift


@dataclass
class DriftSet:
    """Per layer, the item-averaged token mean of: cosine(h_base, h_unlearned), (‖h_u‖ − ‖h_b‖)/‖h_b‖ and
    ‖h_u − h_b‖/‖h_b‖ over every token of the item (prompt and answer)."""

    n_items: int
    cosine: list[float]
    norm_change: list[float]
    distance: list[float]


@dataclass
class DriftResult:
    """Hidden-state drift per named set (e.g. forget, retain); layer 0 is the embedding stream."""

    layers: list[int]
    sets: dict[str, DriftSet] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        records = [
            {
                "set": name,
                "layer": layer,
                "cosine": s.cosine[i],
                "norm_change": s.norm_change[i],
                "distance": s.distance[i],
                "n_items": s.n_items,
            }
            for name, s in self.sets.items()
            for i, layer in enumerate(self.layers)
        ]
        return pd.DataFrame(records)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftResult:
        return cls(data["layers"], {name: DriftSet(**s) for name, s in data["sets"].items()})

    @classmethod
    def from_json(cls, text: str) -> DriftResult:
        return cls.from_dict(json.loads(text))


def hidden_state_drift(
    pair: ModelPair, sets: Mapping[str, Sequence[tuple[str, str | None]]], chat: bool = False, batch_size: int = 8
) -> DriftResult:
    """Per-layer drift between the two models on each set of (prompt, answer) items: one forward per model per batch."""
    if not sets or any(not items for items in sets.values()):
        raise UserError("drift needs at least one non-empty set of (prompt, answer) items, e.g. forget and retain")
    check_range(batch_size, 1, MAX_BATCH_SIZE, "batch size")
    for name, items in sets.items():
        check_range(len(items), 1, MAX_DRIFT_ITEMS, f"the number of {name} items")
    result = DriftResult(layers=[])
    for name, items in sets.items():
        rows = [encode(pair.tokenizer, prompt, answer or None, chat, pair.context_length) for prompt, answer in items]
        totals: torch.Tensor | None = None  # [3, layers + 1]: sums over items of per-item means
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size], pair.tokenizer.pad_token_id, pair.device)
            _ensure_drift_fits(pair, *batch.input_ids.shape)
            stats = _batch_drift(pair, batch.input_ids, batch.attention_mask)
            totals = stats if totals is None else totals + stats
        means = (totals / len(rows)).tolist()
        result.sets[name] = DriftSet(len(rows), *means)
        result.layers = list(range(len(means[0])))
    return result


def _ensure_drift_fits(pair: ModelPair, batch: int, width: int) -> None:
    """Refuse a batch whose hidden states would not fit: every layer's float32 stream of both sides is kept, with
    a stacked copy and the difference beside them (4 streams), plus one forward pass's working set."""
    with pair.use("base") as model:
        shape = model_shape(model)
    streams = 4 * activation_bytes(batch, width, shape.hidden, shape.layers + 1, 4, 1)
    working = activation_bytes(batch, width, shape.hidden, 1, 4, FORWARD_ACTIVATION_FACTOR)
    ensure_fits(streams + working, pair.device, f"hidden-state drift of {batch} items of up to {width} tokens")


def _batch_drift(pair: ModelPair, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[3, layers + 1]: per layer, the sum over the batch's items of their token-mean cosine, norm change, distance."""
    streams = {}
    for side in SIDES:
        with pair.use(side) as model, torch.no_grad():
            with _residual_stream(model, lambda h: h.float()) as states:
                model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            streams[side] = torch.stack(states)  # [layers + 1, B, T, H]
    base, unlearned = streams["base"], streams["unlearned"]
    base_norm = base.norm(dim=-1).clamp_min(1e-12)
    per_token = torch.stack(
        [
            torch.nn.functional.cosine_similarity(base, unlearned, dim=-1),
            (unlearned.norm(dim=-1) - base_norm) / base_norm,
            (unlearned - base).norm(dim=-1) / base_norm,
        ]
    )
    weights = mask.to(per_token.dtype)
    per_item = (per_token * weights).sum(dim=-1) / weights.sum(dim=-1)  # [3, layers + 1, B]
    return per_item.sum(dim=-1).cpu()


# ---------------------------------------------------------------------------------------------- weight change

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
class WeightChangeResult:
    """‖ΔW‖/‖W‖ for every parameter of the pair."""

    changes: list[WeightChange]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.changes], columns=list(WeightChange.__dataclass_fields__))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightChangeResult:
        return cls([WeightChange(**c) for c in data["changes"]])

    @classmethod
    def from_json(cls, text: str) -> WeightChangeResult:
        return cls.from_dict(json.loads(text))


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
    """‖ΔW‖/‖W‖ per parameter between the two sides; LoRA sides contribute B·A·scaling, never a merged model."""
    sides = {}
    for side in SIDES:
        with pair.use(side) as model:
            sides[side] = _side_parameters(model)
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


# ---------------------------------------------------------------------------------------------- CLI


DRIFT_SETS = ("forget", "retain")
VIEWS = ("logit", "drift", "weights")


def drift_sets(
    files: Mapping[str, str | None], limit: int, demo: Sequence[Example] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """The first `limit` (question, answer) items of the forget and retain sets: from the file named for a set, else
    from `demo` (the demo's own examples when None)."""
    if limit < 1:
        raise UserError("the number of items per set must be at least 1")
    check_range(limit, 1, MAX_DRIFT_ITEMS, "the number of items per set")
    paths = {name: (files.get(name) or "").strip() for name in DRIFT_SETS}
    if demo is None and not all(paths.values()):
        try:
            demo = demo_examples()
        except UserError:
            demo = []
    sets = {}
    for name, path in paths.items():
        if path:
            items = [(item.question, item.answer) for item in load_qa_dataset(path, split=name)]
        else:
            items = [(e.question, e.answer) for e in demo or [] if e.split == name]
            if not items:
                raise UserError(f"the demo {name} set is missing: name a {name} file")
        sets[name] = items[:limit]
    return sets
