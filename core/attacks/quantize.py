"""Quantisation attacks: the forget answers scored under quantised merged copies of the unlearned model (and the
base): int8 dynamic on CPU, and bitsandbytes 4-bit NF4 / 8-bit LLM.int8 on CUDA."""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from typing import ClassVar

import torch

from core.attacks.base import Attack, AttackContext, AttackOutcome, answer_probabilities, register
from core.attacks.copies import merged_copy
from core.models.pair import ModelPair


def quantized_int8_copy(pair: ModelPair, side: str) -> torch.nn.Module:
    """A merged fp32 CPU copy of one side with every Linear layer dynamically quantised to int8 (weights int8,
    activations quantised per batch): how an unlearned model is often shipped on CPU."""
    clone = merged_copy(pair, side, device="cpu", dtype=torch.float32)
    with warnings.catch_warnings():
        # torch.ao.quantization warns it will move to torchao; torch 2.13 still ships it and torchao is no dependency
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(clone, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


class _QuantisedAttack(Attack):
    """Score the forget answers under quantised copies of the unlearned model (and of the base)."""

    variant: ClassVar[str] = ""

    def quantised(self, pair: ModelPair, side: str) -> torch.nn.Module:
        raise NotImplementedError

    def run(self, ctx: AttackContext) -> list[AttackOutcome]:
        rows = [ctx.encode(item.question, item.answer) for item in ctx.items]
        sides = ("unlearned", "base") if ctx.settings.attack_base else ("unlearned",)
        probs = {}
        for done, side in enumerate(sides):
            ctx.progress(done / len(sides), f"{self.name}: quantising the {side} model")
            model = self.quantised(ctx.pair, side)
            probs[side] = answer_probabilities(model, ctx.pair.tokenizer, rows, ctx.settings.batch_size)
            del model
        positions = list(range(len(ctx.items)))
        attacked_base = float(probs["base"].mean()) if "base" in probs else None
        outcome = ctx.outcome(self.name, self.variant, positions, float(probs["unlearned"].mean()), attacked_base)
        outcome.headline = True
        return [outcome]


@register
class QuantizeInt8(_QuantisedAttack):
    name = "quantize_int8"
    description = "int8 dynamic quantisation of a merged copy on CPU (torch.ao quantize_dynamic on Linear layers)"
    variant = "int8 dynamic (CPU)"

    def quantised(self, pair: ModelPair, side: str) -> torch.nn.Module:
        return quantized_int8_copy(pair, side)


def _bitsandbytes_missing() -> str | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs the bitsandbytes package"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return None


class _BitsAndBytes(_QuantisedAttack):
    """A merged copy saved and reloaded through bitsandbytes (the adapter is inside the quantised weights)."""

    bits: ClassVar[int] = 4

    def unavailable(self) -> str | None:
        return _bitsandbytes_missing()

    def quantised(self, pair: ModelPair, side: str) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        config = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=pair.dtype)
            if self.bits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        device = pair.device if pair.device.type == "cuda" else torch.device("cuda")
        with tempfile.TemporaryDirectory(prefix="ulens-quant-") as folder:
            clone = merged_copy(pair, side)
            clone.save_pretrained(folder, safe_serialization=True)
            del clone
            model = AutoModelForCausalLM.from_pretrained(
                folder, quantization_config=config, device_map={"": device.index or 0}, dtype=pair.dtype
            )
        model.eval()
        return model


@register
class Quantize4bit(_BitsAndBytes):
    name = "quantize_4bit"
    description = "4-bit NF4 quantisation of a merged copy with bitsandbytes (CUDA only)"
    variant = "nf4 (bitsandbytes)"
    bits = 4


@register
class Quantize8bit(_BitsAndBytes):
    name = "quantize_8bit"
    description = "8-bit LLM.int8 quantisation of a merged copy with bitsandbytes (CUDA only)"
    variant = "int8 (bitsandbytes)"
    bits = 8
