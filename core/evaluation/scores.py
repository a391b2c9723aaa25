"""An item's rows (answer, paraphrased, perturbed) tokenised and batched, and scored in one forward pass: per answer
token its log-prob, argmax and (for Min-K%++) μ/σ of log p."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.data.qa import QAItem, SplitData
from core.evaluation import metrics
from core.evaluation.settings import MIA_SPLITS, EvalSettings
from core.scoring.encoding import Encoded, encode
from core.scoring.forward import shared_prefix_logits
from core.scoring.statistics import token_statistics


@dataclass
class Unit:
    """One item with its rows: the answer, then (when the split has one) the paraphrased answer, then the perturbed."""

    position: int
    split: str
    item: QAItem
    roles: list[str]
    rows: list[Encoded]

    @property
    def width(self) -> int:
        return max(len(row.input_ids) for row in self.rows)

    @property
    def answer_width(self) -> int:
        return max(len(row.input_ids) - row.score_from for row in self.rows)


@dataclass
class TokenScores:
    """One scored row under one model: per answer token its log-prob, the argmax id, the label, and μ/σ of log p."""

    logp: np.ndarray
    argmax: np.ndarray
    labels: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    @property
    def avg_loss(self) -> float:
        return metrics.average_loss(self.logp)


@dataclass
class ItemScores:
    """An item's rows scored: `paraphrased` is the answer's row where the split has no paraphrase."""

    split: str
    item: QAItem
    answer: TokenScores
    paraphrased: TokenScores
    perturbed: list[TokenScores]
    has_paraphrase: bool


def _roles(split: str, item: QAItem) -> list[tuple[str, str]]:
    paraphrase = split != "world_facts" and item.paraphrased_answer is not None
    roles = [("answer", item.answer)] + ([("paraphrased", item.paraphrased_answer)] if paraphrase else [])
    return roles + [("perturbed", text) for text in item.perturbed_answer]


def plan_units(dataset: SplitData, tokenizer: Any, chat: bool, max_length: int) -> list[Unit]:
    """Every item of every split, tokenised once: the rows its teacher-forced metrics need."""
    units = []
    for split, qa in dataset.splits().items():
        for item in qa:
            roles = _roles(split, item)
            rows = [encode(tokenizer, item.question, text, chat, max_length) for _, text in roles]
            units.append(Unit(len(units), split, item, [role for role, _ in roles], rows))
    return units


def plan_batches(units: list[Unit], batch_size: int) -> list[list[Unit]]:
    """Batches of items of similar answer and question lengths (less padding: an item's question is run once and
    its answers continue it, see `shared_prefix_logits`); the results do not depend on the batching."""
    ordered = sorted(units, key=lambda unit: (-unit.answer_width, -unit.width))
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


_STATISTICS = ("logp", "argmax", "mu", "sigma")  # what TokenScores keeps of token_statistics


def _row_scores(statistics: dict[str, torch.Tensor], targets: torch.Tensor, rows: list[Encoded]) -> list[TokenScores]:
    columns = {key: statistics[key].cpu().numpy() for key in _STATISTICS} | {"labels": targets.cpu().numpy()}
    bounds = np.cumsum([len(row.input_ids) - row.score_from for row in rows])[:-1]
    split = {key: np.split(value, bounds) for key, value in columns.items()}
    return [TokenScores(**{key: split[key][i] for key in split}) for i in range(len(rows))]


def _item_scores(unit: Unit, rows: list[TokenScores]) -> ItemScores:
    by_role = dict(zip(unit.roles, rows, strict=True))
    perturbed = [row for role, row in zip(unit.roles, rows, strict=True) if role == "perturbed"]
    answer = by_role["answer"]
    paraphrased = by_role.get("paraphrased", answer)
    return ItemScores(unit.split, unit.item, answer, paraphrased, perturbed, "paraphrased" in by_role)


def _moments_mask(units: list[Unit], device: torch.device) -> torch.Tensor:
    """Scored tokens that need μ/σ: the answer rows of the MIA splits (Min-K%++), a small share of all tokens."""
    flags = [
        (unit.split in MIA_SPLITS and role == "answer", len(row.input_ids) - row.score_from)
        for unit in units
        for role, row in zip(unit.roles, unit.rows, strict=True)
    ]
    wanted = torch.tensor([flag for flag, _ in flags], dtype=torch.bool)
    return wanted.repeat_interleave(torch.tensor([size for _, size in flags])).to(device)


def score_batch(model: torch.nn.Module, units: list[Unit], pad_id: int, device: torch.device) -> list[ItemScores]:
    """One forward pass for every row of every item in the batch; an item's rows share its question's pass."""
    rows = [row for unit in units for row in unit.rows]
    with torch.inference_mode():
        logits, targets = shared_prefix_logits(model, rows, pad_id, device)
        statistics = token_statistics(logits, targets, _moments_mask(units, device))
    scores = iter(_row_scores(statistics, targets, rows))
    return [_item_scores(unit, [next(scores) for _ in unit.rows]) for unit in units]


def pad_token_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def context_length(model: torch.nn.Module, tokenizer: Any, settings: EvalSettings) -> int:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return settings.max_length or int(limit or tokenizer.model_max_length)
