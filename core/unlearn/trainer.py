"""One training loop for every method: AdamW, gradient clipping, seeded stateless sampling, checkpoints, resume.

Batches and per-step random draws depend only on (seed, step), so a run resumed from a checkpoint (weights,
optimizer state, torch RNG) takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from core.common.cache import content_hash
from core.common.errors import UserError
from core.scoring.encoding import Batch, Encoded, collate, encode
from core.unlearn.checkpoints import Checkpointer
from core.unlearn.methods import StepInputs, UnlearningMethod
from core.unlearn.trainee import Trainee

log = logging.getLogger(__name__)

StepProgress = Callable[[int, int, dict[str, float]], None]  # (steps done, total steps, last loss terms)


@dataclass
class TrainConfig:
    """Hyper-parameters of the loop itself (a method's own live in its Options)."""

    steps: int = 30
    lr: float = 1e-4
    batch_size: int = 8
    retain_batch_size: int | None = None
    save_every: int = 0
    seed: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    bf16: bool | None = None  # bf16 autocast; None: on for a CUDA GPU that supports it (CPU autocast is far slower)
    chat: bool = True
    max_length: int = 512

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError("steps must be at least 1")
        if self.batch_size < 1 or (self.retain_batch_size is not None and self.retain_batch_size < 1):
            raise UserError("batch sizes must be at least 1")
        if self.save_every < 0:
            raise UserError("save_every must be 0 (final checkpoint only) or positive")
        if not self.lr > 0:
            raise UserError("the learning rate must be positive")


@dataclass
class TrainingData:
    """The items a run acts on: `forget` (for fine-tuning: the items to learn), `retain`, and refusal strings."""

    forget: Sequence[Any]  # objects with .question and .answer (core.data.qa.QAItem)
    retain: Sequence[Any] = ()
    refusals: Sequence[str] = ()

    def content_hash(self) -> str:
        return content_hash(
            [(i.question, i.answer) for i in self.forget],
            [(i.question, i.answer) for i in self.retain],
            list(self.refusals),
        )


@dataclass
class TrainResult:
    """Where a run's checkpoints are (by step) and its per-step log."""

    checkpoints: dict[int, Path] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final(self) -> Path | None:
        return self.checkpoints[max(self.checkpoints)] if self.checkpoints else None


class RunContext:
    """What a method sees: the model in training, the frozen reference, the tokenised items, and helpers."""

    def __init__(self, trainee: Trainee, tokenizer: Any, data: TrainingData, config: TrainConfig) -> None:
        self.model = trainee.model
        self.reference = trainee.reference
        self.tokenizer = tokenizer
        self.config = config
        self.seed = config.seed
        self.device = next(self.model.parameters()).device
        cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.bf16 = cuda_bf16 if config.bf16 is None else config.bf16
        self.forget_items = list(data.forget)
        self.refusals = list(data.refusals)
        self.forget_rows = [self.encode(i.question, i.answer) for i in data.forget]
        self.retain_rows = [self.encode(i.question, i.answer) for i in data.retain]
        self.forget_lengths = [len(row.input_ids) for row in self.forget_rows]
        self.retain_lengths = [len(row.input_ids) for row in self.retain_rows]

    def encode(self, question: str, answer: str) -> Encoded:
        """Tokenise as the probe does (same chat template, same truncation)."""
        return encode(self.tokenizer, question, answer, chat=self.config.chat, max_length=self.config.max_length)

    def collate(self, rows: list[Encoded]) -> Batch:
        return collate(rows, self.tokenizer.pad_token_id, self.device)

    def forget_batches(self) -> Iterator[Batch]:
        """All forget items in order, in fixed batches (for values computed once)."""
        size = self.config.batch_size
        for start in range(0, len(self.forget_rows), size):
            yield self.collate(self.forget_rows[start : start + size])

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def _seed(*parts: int) -> int:
    return int(content_hash(*parts), 16) % (2**63)


LENGTH_GROUP = 4  # batches per length-sorted group


def draw(
    count: int, size: int, step: int, seed: int, stream: int, lengths: Sequence[int] | None = None
) -> torch.Tensor:
    """Indices of the step's batch: an endless sequence of seeded permutations (one per epoch), cut in batches.

    With `lengths` (tokens per row), each epoch's permutation is cut in groups of LENGTH_GROUP batches and each
    group sorted by length, so a batch holds rows of similar length and pads less (17 % of the demo target's
    tokens were padding); batches stay random because the groups are. Sets smaller than two groups keep the plain
    permutation, or every epoch would repeat the same batches. Stateless in `step`, so a resumed run draws alike."""
    positions = torch.arange(step * size, (step + 1) * size)
    out = torch.empty(size, dtype=torch.long)
    for epoch in positions.div(count, rounding_mode="floor").unique().tolist():
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(_seed(seed, stream, epoch)))
        group = size * LENGTH_GROUP
        if lengths is not None and count >= 2 * group:
            order = permutation.tolist()
            grouped = [sorted(order[s : s + group], key=lambda i: -lengths[i]) for s in range(0, count, group)]
            permutation = torch.tensor([i for part in grouped for i in part])
        chosen = positions.div(count, rounding_mode="floor") == epoch
        out[chosen] = permutation[positions[chosen] % count]
    return out


def step_inputs(run: RunContext, method: UnlearningMethod, step: int) -> StepInputs:
    config = run.config
    forget_rows = draw(len(run.forget_rows), config.batch_size, step, config.seed, 0, run.forget_lengths)
    retain = None
    if method.uses_retain and run.retain_rows:
        retain_size = config.retain_batch_size or config.batch_size
        retain_ids = draw(len(run.retain_rows), retain_size, step, config.seed, 1, run.retain_lengths).tolist()
        retain = run.collate([run.retain_rows[i] for i in retain_ids])
    return StepInputs(
        step=step,
        forget=run.collate([run.forget_rows[i] for i in forget_rows.tolist()]),
        forget_rows=forget_rows,
        retain=retain,
        generator=torch.Generator().manual_seed(_seed(config.seed, 2, step)),
    )


def check_data(method: UnlearningMethod, data: TrainingData) -> None:
    if not data.forget:
        raise UserError(f"the {'training' if not method.unlearns else 'forget'} set is empty: nothing to train on")
    if method.uses_retain and not data.retain:
        raise UserError(f"method {method.name} needs a retain set (--retain FILE)")


def train(
    trainee: Trainee,
    tokenizer: Any,
    method: UnlearningMethod,
    data: TrainingData,
    config: TrainConfig,
    out: Path | None = None,
    progress: StepProgress | None = None,
    show_bar: bool = True,
) -> TrainResult:
    """Train `trainee` with `method`; with `out`, save checkpoints there and resume from the latest matching one."""
    check_data(method, data)
    method.check(trainee.model)
    run = RunContext(trainee, tokenizer, data, config)
    trainable = [p for name, p in trainee.candidates() if method.trainable(name)]
    if not trainable:
        raise UserError(f"method {method.name} selects no trainable parameter of this model (check its options)")
    trainee.freeze_except(trainable)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    checkpointer = Checkpointer(out, trainee, method, config, data.content_hash()) if out else None
    result = TrainResult()
    start = 0
    if checkpointer:
        resumable = checkpointer.resume_point()
        result.checkpoints = checkpointer.existing()
        if resumable is not None:
            start, result.history = checkpointer.restore(resumable, optimizer)
            log.info("resuming %s from step %d (%s)", method.name, start, resumable)
    began = time.perf_counter()
    trainee.model.train()
    with torch.no_grad():
        method.prepare(run)
    bar = tqdm(total=config.steps, initial=start, desc=method.name, unit="step", disable=not show_bar, leave=False)
    step = start
    try:
        for step in range(start, config.steps):
            terms = one_step(run, method, step, optimizer, trainable)
            result.history.append({"step": step + 1, **terms})
            bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items()}, refresh=False)
            bar.update(1)
            if progress:
                progress(step + 1, config.steps, terms)
            if checkpointer and checkpointer.due(step + 1):
                result.checkpoints[step + 1] = checkpointer.save(step + 1, optimizer, result.history)
    except KeyboardInterrupt:
        done = len(result.history) and result.history[-1]["step"]
        if checkpointer and done and done not in result.checkpoints:
            result.checkpoints[done] = checkpointer.save(done, optimizer, result.history)
            log.warning("interrupted: saved step %d in %s; run the same command again to resume", done, out)
        raise
    finally:
        bar.close()
        trainee.model.eval()
    result.seconds = time.perf_counter() - began
    return result


def one_step(
    run: RunContext,
    method: UnlearningMethod,
    step: int,
    optimizer: torch.optim.Optimizer,
    trainable: list[torch.nn.Parameter],
) -> dict[str, float]:
    inputs = step_inputs(run, method, step)
    with run.autocast():
        loss = method.loss(run, inputs)
    if not torch.isfinite(loss.total):
        raise UserError(f"{method.name}: the loss became {loss.total.item()} at step {step + 1}; lower the lr")
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, run.config.max_grad_norm)
    optimizer.step()
    return {"loss": loss.total.item(), **loss.terms, "grad_norm": float(grad_norm)}
