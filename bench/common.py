"""Pieces several bench scripts share; a script runs as `python bench/x.py`, so this folder is on its sys.path."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

PROMPT = (
    "Question: Which city is the capital of France, the country famous for wine, cheese and the Eiffel tower? Answer:"
)
ANSWER = "The capital of France is Paris."


def make_adapter(model_dir: Path, out: Path) -> Path:
    """A random LoRA (r=16, all linear layers) standing in for an unlearning run's adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def cpu_time(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU seconds of fn over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def parse_bench_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The shared --repeats and --threads options added and parsed; torch's thread count set from --threads."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


@contextlib.contextmanager
def adapter_pair() -> Iterator[tuple[object, Path, Path]]:
    """(pair, model dir, adapter dir): the embedded SmolLM2 (fp32, CPU) as base and with a random LoRA as unlearned,
    the adapter in a temporary folder for the duration."""
    from core.models.embedded import ensure_embedded_model
    from core.models.pair import ModelPair
    from core.models.spec import ModelSpec

    model_dir = ensure_embedded_model()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(model_dir, Path(tmp) / "adapter")
        spec = ModelSpec(str(model_dir), dtype="float32", device="cpu")
        unlearned = ModelSpec(str(model_dir), adapter=str(adapter), dtype="float32", device="cpu")
        yield ModelPair.load(spec, unlearned), model_dir, adapter
