"""Hidden-state drift: per layer, cosine similarity and norm change between base and unlearned activations, averaged
over a forget set and a retain set (RMU's own diagnostic), and the sets it reads by default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from core.analyses.lens.architecture import residual_stream
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
from core.common.serial import JsonResult
from core.data.examples import Example, demo_examples
from core.data.qa import load_qa_dataset
from core.models.pair import SIDES, ModelPair
from core.scoring.encoding import collate, encode

DRIFT_SETS = ("forget", "retain")


@dataclass
class DriftSet:
    """Per layer, the item-averaged token mean of: cosine(h_base, h_unlearned), (‖h_u‖ − ‖h_b‖)/‖h_b‖ and
    ‖h_u − h_b‖/‖h_b‖ over every token of the item (prompt and answer)."""

    n_items: int
    cosine: list[float]
    norm_change: list[float]
    distance: list[float]


@dataclass
class DriftResult(JsonResult):
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftResult:
        return cls(data["layers"], {name: DriftSet(**s) for name, s in data["sets"].items()})


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
            with residual_stream(model, lambda h: h.float()) as states:
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
