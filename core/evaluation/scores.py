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
from core.scoring.encoding import Encoded, scored_row
from core.scoring.forward import shared_prefix_logits
from core.scoring.statistics import token_statistics
from core.scoring.templates import Template


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
    """One scored row under one model: per scored token its log-prob, the argmax id, the label, and μ/σ of log p.

    The scored tokens are open-unlearning's (answer, end-of-turn tokens, EOS) unless the settings say answer only;
    `eos_last` marks a row whose last scored token is the EOS, which open-unlearning's token-wise metrics (exact
    memorisation, extraction strength, Min-K%, Min-K%++) leave out ("-1 to ignore eos prediction")."""

    logp: np.ndarray
    argmax: np.ndarray
    labels: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    eos_last: bool = False
    text: str | None = None  # the scored tokens decoded without special tokens (the ZLib attack's text)
    loss_logp: np.ndarray | None = None  # open-unlearning's cross-entropy log-probs, where its arithmetic is asked

    @property
    def avg_loss(self) -> float:
        return metrics.average_loss(self.logp if self.loss_logp is None else self.loss_logp)

    def tokenwise(self) -> TokenScores:
        """The rows open-unlearning's token-wise metrics read: all but a final EOS."""
        if not self.eos_last or len(self.logp) < 2:
            return self
        keep = slice(0, len(self.logp) - 1)
        return TokenScores(
            self.logp[keep], self.argmax[keep], self.labels[keep], self.mu[keep], self.sigma[keep], False, self.text
        )


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


def plan_units(
    dataset: SplitData, tokenizer: Any, template: Template | bool | str, max_length: int, score_end: bool = True
) -> list[Unit]:
    """Every item of every split, tokenised once: the rows its teacher-forced metrics need."""
    units = []
    for split, qa in dataset.splits().items():
        for item in qa:
            roles = _roles(split, item)
            rows = [scored_row(tokenizer, item.question, text, template, max_length, score_end) for _, text in roles]
            units.append(Unit(len(units), split, item, [role for role, _ in roles], rows))
    return units


def plan_batches(units: list[Unit], batch_size: int) -> list[list[Unit]]:
    """Batches of items of similar answer and question lengths (less padding: an item's question is run once and
    its answers continue it, see `shared_prefix_logits`); the results do not depend on the batching."""
    ordered = sorted(units, key=lambda unit: (-unit.answer_width, -unit.width))
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


_STATISTICS = ("logp", "argmax", "mu", "sigma")  # what TokenScores keeps of token_statistics


def _row_scores(
    statistics: dict[str, torch.Tensor], targets: torch.Tensor, rows: list[Encoded], eos_id: int | None
) -> list[TokenScores]:
    keys = [*_STATISTICS, *(["loss_logp"] if "loss_logp" in statistics else [])]
    columns = {key: statistics[key].cpu().numpy() for key in keys} | {"labels": targets.cpu().numpy()}
    bounds = np.cumsum([len(row.input_ids) - row.score_from for row in rows])[:-1]
    split = {key: np.split(value, bounds) for key, value in columns.items()}
    scores = [TokenScores(**{key: split[key][i] for key in split}) for i in range(len(rows))]
    for score, row in zip(scores, rows, strict=True):
        score.eos_last = row.end_tokens > 0 and eos_id is not None and int(score.labels[-1]) == eos_id
    return scores


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


def score_batch(
    model: torch.nn.Module,
    units: list[Unit],
    pad_id: int,
    device: torch.device,
    settings: EvalSettings | None = None,
    eos_id: int | None = None,
) -> list[ItemScores]:
    """One forward pass for every row of every item in the batch; an item's rows share its question's pass."""
    settings = settings or EvalSettings()
    rows = [row for unit in units for row in unit.rows]
    with torch.inference_mode():
        logits, targets = shared_prefix_logits(model, rows, pad_id, device, settings.pad_mask)
        moments = _moments_mask(units, device)
        statistics = token_statistics(logits, targets, moments, model_dtype_logp=settings.model_dtype_logp)
    scores = iter(_row_scores(statistics, targets, rows, eos_id))
    return [_item_scores(unit, [next(scores) for _ in unit.rows]) for unit in units]


def pad_token_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def context_length(model: torch.nn.Module, tokenizer: Any, settings: EvalSettings) -> int:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return settings.max_length or int(limit or tokenizer.model_max_length)
