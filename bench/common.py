"""Pieces several bench scripts share; a script runs as `python bench/x.py`, so this folder is on its sys.path."""

from __future__ import annotations

from pathlib import Path

import torch


def make_adapter(model_dir: Path, out: Path) -> Path:
    """A random LoRA (r=16, all linear layers) standing in for an unlearning run's adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out
