"""Real-size pairs without downloading weights: random Llama-3.2-1B checkpoints built from its exact config.

Builds (in /tmp) a base, an RMU-style copy (three MLP matrices changed: down_proj of layers 5–7, RMU's default
layer ℓ = 7 and the two below it) and a fully changed copy, as safetensors folders with a word-level tokenizer.
Each measurement runs in a subprocess of its own, so its peak RSS is its own:

- one:      one model alone (the pair base/base loads one backbone): load time, peak RSS, a 64-token probe;
- rmu:      the RMU-style pair (identical tensors loaded once): load time, peak RSS / one model's (goal ≤ 1.1),
            "k of n tensors differ", the 64-token probe, IG attribution (16 steps), the logit lens, evaluate
            throughput;
- offload:  the fully changed pair under a budget of one model's weights (--max-memory): load time, peak RSS,
            which layers are offloaded, the same probe, lens and evaluate throughput;
- reference: each side of the fully changed pair loaded alone, in memory, one after the other: the probe's
            log-probs the offloaded run must equal (goal: within 1e-5) and its in-memory time (slowdown ratio).

Then the memory plan of a Llama-2-7B and a Llama-3.1-8B pair on 24 GB and 80 GB GPUs, from their configs on the
meta device: two full checkpoints, and an RMU-style pair that shares all but three matrices.

Usage: python bench/scale.py [--dir /tmp/ulens-scale] [--dtype float32] [--only one,rmu,offload,reference]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# The published config.json values (meta-llama/Llama-3.2-1B, Llama-2-7b-hf, Llama-3.1-8B), written out here so
# nothing is downloaded.
LLAMA_3_2_1B = {
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": True,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": 128001, "attention_bias": False, "mlp_bias": False,
}  # fmt: skip
LLAMA_2_7B = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
LLAMA_3_1_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": 128001,
}  # fmt: skip
WORKERS = ("one", "rmu", "offload", "reference")
RMU_CHANGED = [f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)]
WORDS = [f"w{i}" for i in range(2000)]
PROMPT = " ".join(WORDS[i * 37 % 2000] for i in range(48))  # 48 words + BOS → 49 prompt tokens
ANSWER = " ".join(WORDS[i * 91 % 2000] for i in range(15))  # 15 answer tokens: 64 in all
IG_PROMPT, IG_ANSWER = " ".join(PROMPT.split()[:8]), " ".join(ANSWER.split()[:2])  # 9 + 2 tokens


def build(folder: Path, dtype: torch.dtype) -> None:
    """Base, RMU-style and fully changed checkpoints (skipped where the folder already holds them)."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    if all((folder / name / "model.safetensors").is_file() for name in ("base", "rmu", "full")):
        return
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    config = LlamaConfig(**{**LLAMA_3_2_1B, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name in ("base", "rmu", "full"):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    del model
    generator = torch.Generator().manual_seed(1)
    for name, changed in (("rmu", RMU_CHANGED), ("full", None)):
        path = folder / name / "model.safetensors"
        state = load_file(path)
        for key in changed or list(state):
            noise = torch.randn(state[key].shape, generator=generator, dtype=torch.float32)
            state[key] = (state[key].float() + 0.01 * noise).to(state[key].dtype)
        save_file(state, path, metadata={"format": "pt"})
        del state


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB


class AnonPeak:
    """Peak anonymous resident memory (RssAnon), sampled every 20 ms: what the process allocated beyond the weights,
    which transformers keeps as views of the memory-mapped checkpoint files (file-backed pages of peak RSS)."""

    def __init__(self) -> None:
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def gib(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def timed(function, *args, **kwargs):
    began = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - began


def probe(pair) -> tuple[list[list[float]], float]:
    from core.analyses.probe import ProbeRequest, score

    (result,), seconds = timed(score, pair, [ProbeRequest(PROMPT, ANSWER)], top_k=5)
    logprobs = [[t.logprob_base for t in result.tokens], [t.logprob_unlearned for t in result.tokens]]
    return logprobs, seconds


def evaluate_rate(pair, side: str, items: int = 4) -> float:
    """Items per second of evaluate_model (teacher-forced metrics; answer, no paraphrases) on one side."""
    from core.data.qa import QADataset, QAItem, SplitData
    from core.evaluation.evaluate import evaluate_model
    from core.evaluation.settings import EvalSettings

    qa = [QAItem(index=i, question=" ".join(PROMPT.split()[i : i + 12]), answer=IG_ANSWER) for i in range(items)]
    with pair.use(side) as model:
        _, seconds = timed(
            evaluate_model, model, pair.tokenizer, SplitData(forget=QADataset("b", "forget", qa)), EvalSettings()
        )
    return items / seconds


def worker(name: str, folder: Path, dtype: str, budget: int | None) -> dict:
    """One measurement, in this (fresh) process."""
    from core.analyses.attribution import AttributionSettings, attribute
    from core.analyses.lens import logit_lens
    from core.models.pair import ModelPair
    from core.models.spec import ModelSpec

    torch.set_num_threads(2)
    anon = AnonPeak()
    spec = lambda side: ModelSpec(str(folder / side), dtype=dtype, device="cpu")  # noqa: E731
    out: dict = {"name": name}
    if name == "reference":
        logprobs, seconds = [], 0.0
        for side in ("base", "full"):
            pair = ModelPair.load(spec(side), spec(side))
            (values, _), took = timed(probe, pair)
            logprobs.append(values[0])
            seconds += took
            del pair
        return out | {
            "logprobs": logprobs,
            "probe_s": seconds,
            "peak_rss_gib": peak_rss_gib(),
            "peak_anon_gib": anon.gib(),
        }
    unlearned = {"one": "base", "rmu": "rmu", "offload": "full"}[name]
    pair, out["load_s"] = timed(ModelPair.load, spec("base"), spec(unlearned), max_memory=budget)
    out["describe"] = {k: v for k, v in pair.describe().items() if k != "specs"}
    out["logprobs"], out["probe_s"] = probe(pair)
    out["peak_rss_probe_gib"] = peak_rss_gib()  # load + the 64-token probe: the same work in every worker
    if name != "one":
        _, out["lens_s"] = timed(logit_lens, pair, IG_PROMPT, IG_ANSWER)
        out["evaluate_items_per_s"] = evaluate_rate(pair, "unlearned")
    if name == "rmu":
        settings = AttributionSettings(n_steps=16)
        _, out["ig16_s"] = timed(attribute, pair, IG_PROMPT, IG_ANSWER, settings=settings)
    out["peak_rss_gib"], out["peak_anon_gib"] = peak_rss_gib(), anon.gib()
    return out


def run_worker(name: str, args: argparse.Namespace, budget: int | None) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--dir", str(args.dir), "--dtype", args.dtype]
    if budget:
        command += ["--budget", str(budget)]
    # the memory check is skipped: other jobs on this shared box hold RAM that comes and goes, and the float32
    # weights are views of the memory-mapped checkpoints (page cache the kernel can drop), not new allocations
    env = {**os.environ, "ULENS_HOME": str(args.dir / "home"), "TOKENIZERS_PARALLELISM": "false"}
    env["ULENS_SKIP_MEMORY_CHECK"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"worker {name} failed")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (args.dir / "results").mkdir(exist_ok=True)
    (args.dir / "results" / f"{name}.json").write_text(json.dumps(result))
    return result


def memory_plan(name: str, values: dict, gpu_gib: int) -> dict:
    """What sits where for a pair of this config in bfloat16 on one GPU of `gpu_gib` GiB (MEMORY_HEADROOM of it
    for weights, the rest for activations; CPU RAM behind it): two full checkpoints, each side half the budget,
    and an RMU-style pair (all but three MLP matrices shared)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    from core.common.limits import MEMORY_HEADROOM
    from core.models.offload import config_device_map, describe_offload, offloaded

    config = LlamaConfig(**values)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    weights = sum(p.numel() for p in empty.parameters()) * 2
    matrix = config.hidden_size * config.intermediate_size * 2
    usable = int(MEMORY_HEADROOM * gpu_gib * 2**30)
    plan = {"model": name, "gpu_gib": gpu_gib, "one_model_gib": weights / 2**30, "usable_gib": usable / 2**30}
    plan["rmu_pair_gib"] = (weights + 3 * matrix) / 2**30
    plan["rmu_pair"] = "all on the GPU" if weights + 3 * matrix <= usable else "offloaded (as two full)"
    if 2 * weights <= usable:
        plan["full_pair"] = "both sides whole on the GPU"
        return plan
    cuda = torch.device("cuda", 0)
    placement = config_device_map(config, {0: usable // 2, "cpu": 2**40}, torch.bfloat16)
    moved = offloaded(placement, cuda)
    on_gpu = sum(1 for module, where in placement.items() if ".layers." in module and where == 0)
    plan["full_pair"] = f"per side {on_gpu} of {config.num_hidden_layers} layers on the GPU; " + (
        describe_offload({"each side": moved}) or "nothing offloaded"
    )
    return plan


def report(results: dict, plans: list[dict]) -> None:
    one, rmu, off, ref = (results.get(k) for k in ("one", "rmu", "offload", "reference"))
    lines = []
    if one and rmu and "peak_rss_probe_gib" in rmu:
        ratio = rmu["peak_rss_probe_gib"] / one["peak_rss_probe_gib"]
        lines.append(f"RMU-style pair peak RSS / one model's (load + 64-token probe): {ratio:.3f} (goal ≤ 1.1)")
        lines.append(f"  {rmu['describe'].get('tensors')}")
    if off and ref:
        pairs = [zip(off["logprobs"][side], ref["logprobs"][side], strict=True) for side in (0, 1)]
        gap = max(abs(a - b) for both in pairs for a, b in both)
        lines.append(f"fully changed pair, one-model budget: max |Δ log-prob| vs in memory = {gap:.2e} (goal ≤ 1e-5)")
        lines.append(f"  offloaded: {off['describe'].get('offloaded')}")
        if one:
            both = off["peak_rss_probe_gib"], one["peak_rss_probe_gib"]
            lines.append(f"  peak RSS {both[0]:.2f} GiB vs one model {both[1]:.2f} GiB")
        slowdown = off["probe_s"] / ref["probe_s"]
        lines.append(f"offloaded probe slowdown: {slowdown:.2f}× (in memory {ref['probe_s']:.1f} s)")
    for name, r in results.items():
        keys = ("load_s", "probe_s", "ig16_s", "lens_s", "evaluate_items_per_s", "peak_rss_probe_gib", "peak_rss_gib")
        keys += ("peak_anon_gib",)
        lines.append(f"{name}: " + ", ".join(f"{k}={r[k]:.2f}" for k in keys if k in r))
    for plan in plans:
        lines.append(
            f"{plan['model']} on {plan['gpu_gib']} GB ({plan['usable_gib']:.1f} GiB for weights; one model "
            f"{plan['one_model_gib']:.1f} GiB): full pair: {plan['full_pair']}; RMU-style pair "
            f"({plan['rmu_pair_gib']:.1f} GiB): {plan['rmu_pair']}"
        )
    print("\n".join(line for line in lines if line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ulens-scale"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--only", default="one,rmu,offload,reference")
    parser.add_argument("--worker")
    parser.add_argument("--budget", type=int)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.dir, args.dtype, args.budget)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    _, built = timed(build, args.dir, dtype)
    print(f"checkpoints in {args.dir} ({built:.0f} s)", flush=True)
    from core.models.loading import estimate_weight_bytes
    from core.models.spec import ModelSpec

    one_model = estimate_weight_bytes(ModelSpec(str(args.dir / "base")), dtype)
    results = {}  # a worker's last result is kept in DIR/results: --only reruns some and reports all
    for name in WORKERS:
        if name in args.only.split(","):
            results[name] = run_worker(name, args, one_model if name == "offload" else None)
            print(json.dumps({k: v for k, v in results[name].items() if k != "logprobs"}), flush=True)
        elif (args.dir / "results" / f"{name}.json").is_file():
            results[name] = json.loads((args.dir / "results" / f"{name}.json").read_text())
    plans = [memory_plan(n, v, g) for n, v in (("Llama-2-7B", LLAMA_2_7B), ("Llama-3.1-8B", LLAMA_3_1_8B))
             for g in (24, 80)]  # fmt: skip
    report(results, plans)


if __name__ == "__main__":
    main()
