"""The relearning attack: a few LoRA fine-tuning steps on some forget items, the others re-scored along the way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from core.attacks.base import (
    Attack,
    AttackContext,
    AttackOutcome,
    RobustnessSettings,
    answer_probabilities,
    not_applicable,
    register,
)
from core.attacks.copies import ensure_copy_fits, merged_copy
from core.common import Option
from core.common.errors import UserError
from core.common.limits import MAX_RELEARN_STEP, model_shape, saved_for_backward
from core.data.qa import QAItem


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for a block without changing the caller's random state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def relearn_split(count: int, train: int, seed: int) -> tuple[list[int], list[int]]:
    """Positions trained on and positions evaluated: a seeded choice of `train` of `count` items (at least one
    item is always left to evaluate)."""
    if count < 2:
        raise UserError("relearning needs at least 2 forget items: some to train on, the rest to evaluate")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    k = min(train, count - 1)
    return sorted(order[:k]), sorted(order[k:])


@register
class Relearn(Attack):
    name = "relearn"
    description = "a few LoRA fine-tuning steps on some forget items, then the others re-scored (a curve over steps)"
    # Defaults are RobustnessSettings'; the steps are typed as the comma-separated text it parses.
    option_specs = (
        Option("relearn_items", int, RobustnessSettings.relearn_items, "Forget items trained on; the others are "
               "evaluated.", min=1, label="Items trained on"),
        Option("relearn_steps", str, ",".join(map(str, RobustnessSettings.relearn_steps)), "Steps at which the "
               f"held-out items are scored (1..{MAX_RELEARN_STEP:,}); training runs to the last.",
               label="Evaluate at steps"),
        Option("relearn_lr", float, RobustnessSettings.relearn_lr, "Learning rate of the LoRA fine-tuning.",
               min=1e-6, max=1.0, label="Learning rate"),
        Option("lora_rank", int, RobustnessSettings.lora_rank, "Rank of the LoRA adapter trained.", min=1, max=256,
               label="LoRA rank"),
    )  # fmt: skip

    def run(self, ctx: AttackContext) -> list[AttackOutcome]:
        settings = ctx.settings
        if len(ctx.items) < 2:
            return [not_applicable(self.name, "relearning needs at least 2 forget items (train on some, score others)")]
        trained, evaluated = relearn_split(len(ctx.items), settings.relearn_items, settings.seed)
        ctx.progress(0.0, f"{self.name}: copying the unlearned model")
        _ensure_relearning_fits(ctx, [ctx.items[p] for p in trained])
        copy_ = merged_copy(ctx.pair, "unlearned", dtype=torch.float32)
        with torch.inference_mode(False), torch.enable_grad(), _seeded(settings.seed, next(copy_.parameters()).device):
            curve = relearning_curve(ctx, copy_, trained, evaluated)
        trained_on = [ctx.items[p].index for p in trained]
        last = max(settings.relearn_steps)
        return [
            ctx.outcome(
                self.name, f"step {step}", evaluated, probability, step=step, headline=step == last,
                details={"trained_on": trained_on, "train_loss": loss},
            )
            for step, probability, loss in curve
        ]  # fmt: skip


def _ensure_relearning_fits(ctx: AttackContext, trained: list[QAItem]) -> None:
    """Refuse relearning when the fp32 copy plus one training batch's activations (every layer kept for the
    backward pass) would not fit: LoRA's own weights and optimiser state are small beside them."""
    rows = [ctx.encode(item.question, item.answer) for item in trained[:8]]  # TrainConfig's batch is at most 8
    length = max(len(row.input_ids) for row in rows)
    with ctx.pair.use("unlearned") as model:
        shape = model_shape(model)
        training = saved_for_backward(shape, len(rows), length, 4)
        training += len(rows) * length * shape.vocab * 4 * 3  # logits, their gradient, log-softmax
        what = f"relearning on a float32 copy of the unlearned model ({len(rows)} items of up to {length} tokens)"
        ensure_copy_fits(model, ctx.pair.device, ctx.pair.device, torch.float32, what, training)


def relearning_curve(
    ctx: AttackContext, model: torch.nn.Module, trained: list[int], evaluated: list[int]
) -> list[tuple[int, float, float | None]]:
    """Fine-tune a new LoRA adapter on `model` (a copy: it is changed) with the items at `trained`; at step 0 and
    at each of the settings' steps, the mean probability of the answers at `evaluated` (and the step's loss)."""
    from core.unlearn import TrainConfig, TrainingData, build_trainee, get_method, lora_config, train

    settings, tokenizer = ctx.settings, ctx.pair.tokenizer
    rows = [ctx.encode(ctx.items[p].question, ctx.items[p].answer) for p in evaluated]
    lora = lora_config(settings.lora_rank, 2.0 * settings.lora_rank, "all-linear")
    trainee = build_trainee(model, "relearning copy", None, tokenizer, lora, keep_reference=False)
    curve: list[tuple[int, float, float | None]] = []

    def evaluate(step: int, loss: float | None) -> None:
        was_training = trainee.model.training
        trainee.model.eval()
        probability = float(answer_probabilities(trainee.model, tokenizer, rows, settings.batch_size).mean())
        curve.append((step, probability, loss))
        trainee.model.train(was_training)

    def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
        if step in settings.relearn_steps:
            evaluate(step, terms.get("loss"))
        ctx.progress(step / steps, f"relearn: step {step}/{steps}")

    config = TrainConfig(
        steps=max(settings.relearn_steps),
        lr=settings.relearn_lr,
        batch_size=min(len(trained), 8),
        seed=settings.seed,
        chat=settings.chat,
        max_length=ctx.pair.context_length,
    )
    evaluate(0, None)
    data = TrainingData(forget=[ctx.items[p] for p in trained])
    train(trainee, tokenizer, get_method("finetune")(), data, config, progress=on_step, show_bar=False)
    return curve
