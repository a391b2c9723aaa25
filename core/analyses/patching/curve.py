"""Activation patching between the two models of a pair (and an oracle where one is loaded), for one prompt and
answer (`patch_curve`) and averaged over a forget and a retain set (`depth_over_sets`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core.analyses.patching.depth import (
    GAP_FLOOR,
    depth_score,
    erasure_ratio,
    oracle_depth_score,
    recovery_ratio,
)
from core.analyses.patching.runs import POSITIONS, patch_positions, patched_logprobs, record
from core.common.errors import UserError
from core.common.limits import MAX_DRIFT_ITEMS, check_range, check_text
from core.common.serial import JsonResult
from core.models.pair import ModelPair
from core.scoring.encoding import encode

ModelSource = Callable[[], contextlib.AbstractContextManager[torch.nn.Module]]  # e.g. lambda: oracle_pair.use("base")


@dataclass
class PatchingResult(JsonResult):
    """The patching curves of one prompt + answer; every log-prob is the answer's mean token log-prob (nats/token).

    `patched_logprob[l]`: the unlearned model run on the base model's stream after layer l (layer 0: the stream
    entering the first block); `reverse_logprob[l]`: the base model run on the unlearned model's stream;
    `oracle_patched_logprob[l]`: the base model run on the oracle's stream (where an oracle was given).
    `recovery`, `erasure`, `depth_score` and `oracle_depth_score` are defined in core.analyses.patching.depth."""

    prompt: str
    answer: str
    chat: bool
    positions: str
    answer_tokens: list[str]
    layers: list[int]
    base_logprob: float
    unlearned_logprob: float
    patched_logprob: list[float]
    reverse_logprob: list[float]
    recovery: list[float]
    erasure: list[float]
    depth_score: float
    oracle_logprob: float | None = None
    oracle_patched_logprob: list[float] | None = None
    oracle_depth_score: float | None = None
    gap_floor: float = GAP_FLOOR
    truncated: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchingResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class DepthSet:
    """One set's depth scores: per item, their mean, and the item-averaged erasure ratio per layer."""

    n_items: int
    depth: list[float]
    mean_depth: float
    erasure: list[float]
    gap: list[float]  # m_B − m_U per item (nats/token)
    oracle_depth: list[float | None] = field(default_factory=list)
    mean_oracle_depth: float | None = None


@dataclass
class DepthResult(JsonResult):
    """Depth scores per named set (forget, retain); layer 0 is the embedding stream."""

    layers: list[int]
    positions: str
    sets: dict[str, DepthSet] = field(default_factory=dict)
    gap_floor: float = GAP_FLOOR

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepthResult:
        sets = {name: DepthSet(**s) for name, s in data["sets"].items()}
        return cls(data["layers"], data["positions"], sets, data.get("gap_floor", GAP_FLOOR))


def _encoded(pair: ModelPair, prompt: str, answer: str, chat: bool) -> tuple[torch.Tensor, int, bool]:
    check_text(prompt, "prompt")
    check_text(answer, "answer")
    if answer is None or not answer.strip():
        raise UserError("the answer is empty: patching follows the answer's log-prob through the layers")
    row = encode(pair.tokenizer, prompt, answer, chat, pair.context_length)
    if row.score_from < 1:
        raise UserError("patching needs at least one prompt token before the answer")
    return torch.tensor(row.input_ids, device=pair.device), row.score_from, row.truncated


@contextlib.contextmanager
def _side(pair: ModelPair, side: str) -> Iterator[torch.nn.Module]:
    with pair.use(side, "patching") as model:
        yield model


def _item(
    pair: ModelPair, ids: torch.Tensor, p: int, positions: str, reference: ModelSource | None, forward: bool
) -> dict[str, Any]:
    """Every run of one item: clean log-probs, the reverse curve, the forward curve (if asked), the oracle's."""
    where = patch_positions(positions, len(ids), p)
    out: dict[str, Any] = {}
    with _side(pair, "unlearned") as model:
        unlearned = record(model, ids, p)
    with _side(pair, "base") as model:
        base = record(model, ids, p)
        out["reverse"] = patched_logprobs(model, ids, p, unlearned.states, where).mean(-1).tolist()
    if forward:
        with _side(pair, "unlearned") as model:
            out["forward"] = patched_logprobs(model, ids, p, base.states, where).mean(-1).tolist()
    out["base"], out["unlearned"] = float(base.token_logprobs.mean()), float(unlearned.token_logprobs.mean())
    if reference is not None:
        with reference() as model:
            oracle = record(model, ids, p)
        with _side(pair, "base") as model:
            out["oracle_reverse"] = patched_logprobs(model, ids, p, oracle.states, where).mean(-1).tolist()
        out["oracle"] = float(oracle.token_logprobs.mean())
    return out


def _check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise UserError(f"unknown patching positions {positions!r}; choose one of {', '.join(POSITIONS)}")


def patch_curve(
    pair: ModelPair,
    prompt: str,
    answer: str,
    chat: bool = False,
    positions: str = "all",
    reference: ModelSource | None = None,
) -> PatchingResult:
    """Patch base → unlearned and unlearned → base after every layer (and oracle → base with `reference`), one batch
    of rows per direction; read the ratios and the depth score off the curves."""
    _check_positions(positions)
    ids, p, truncated = _encoded(pair, prompt, answer, chat)
    with torch.inference_mode(False):
        runs = _item(pair, ids, p, positions, reference, forward=True)
    base, unlearned = runs["base"], runs["unlearned"]
    erasure = erasure_ratio(runs["reverse"], base, unlearned)
    oracle = runs.get("oracle_reverse")
    texts = [pair.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids[p:].tolist()]
    return PatchingResult(
        prompt=prompt,
        answer=answer,
        chat=chat,
        positions=positions,
        answer_tokens=texts,
        layers=list(range(len(erasure))),
        base_logprob=base,
        unlearned_logprob=unlearned,
        patched_logprob=runs["forward"],
        reverse_logprob=runs["reverse"],
        recovery=recovery_ratio(runs["forward"], base, unlearned),
        erasure=erasure,
        depth_score=depth_score(erasure),
        oracle_logprob=runs.get("oracle"),
        oracle_patched_logprob=oracle,
        oracle_depth_score=None if oracle is None else oracle_depth_score(runs["reverse"], oracle, base),
        truncated=truncated,
    )


def depth_over_sets(
    pair: ModelPair,
    sets: Mapping[str, Sequence[tuple[str, str]]],
    chat: bool = False,
    positions: str = "all",
    reference: ModelSource | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> DepthResult:
    """The depth score of every item of each set (e.g. forget, retain): the reverse curve per item (one batch of
    layer rows), and the oracle's where `reference` is given."""
    _check_positions(positions)
    if not sets or any(not items for items in sets.values()):
        raise UserError("the depth score needs non-empty sets of (prompt, answer) items, e.g. forget and retain")
    for name, items in sets.items():
        check_range(len(items), 1, MAX_DRIFT_ITEMS, f"the number of {name} items")
    total, done = sum(len(items) for items in sets.values()), 0
    result = DepthResult(layers=[], positions=positions)
    for name, items in sets.items():
        per_item = []
        for prompt, answer in items:
            ids, p, _ = _encoded(pair, prompt, answer, chat)
            with torch.inference_mode(False):
                per_item.append(_item(pair, ids, p, positions, reference, forward=False))
            done += 1
            if progress:
                progress(done / total, f"depth score: item {done}/{total} ({name})")
        result.sets[name] = _depth_set(per_item)
        result.layers = list(range(len(per_item[0]["reverse"])))
    return result


def _depth_set(per_item: list[dict[str, Any]]) -> DepthSet:
    erasures = [erasure_ratio(run["reverse"], run["base"], run["unlearned"]) for run in per_item]
    depths = [depth_score(e) for e in erasures]
    oracle = [
        oracle_depth_score(run["reverse"], run["oracle_reverse"], run["base"]) if "oracle_reverse" in run else None
        for run in per_item
    ]
    defined = [d for d in oracle if d is not None]
    return DepthSet(
        n_items=len(per_item),
        depth=depths,
        mean_depth=sum(depths) / len(depths),
        erasure=torch.tensor(erasures, dtype=torch.float64).mean(0).tolist(),
        gap=[run["base"] - run["unlearned"] for run in per_item],
        oracle_depth=oracle if any("oracle_reverse" in run for run in per_item) else [],
        mean_oracle_depth=sum(defined) / len(defined) if defined else None,
    )
