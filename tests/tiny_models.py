"""Tiny random models and tokenizers for the unit tier (imported by tests; fixtures live in conftest.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch


def make_tiny_llama(seed: int = 0, vocab_size: int = 96, layers: int = 2, hidden: int = 32):
    """A random LlamaForCausalLM small enough for exact unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


class TinyTokenizer:
    """A deterministic word-piece-free tokenizer over a fixed character vocabulary (one token per character)."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    pad_token, bos_token, eos_token, unk_token = "<pad>", "<s>", "</s>", None
    chat_template = "user: {{ messages[0]['content'] }} | assistant:"
    model_max_length = 128
    _chars = tuple(chr(c) for c in range(32, 32 + 93))

    def __init__(self) -> None:
        self._ids = {ch: i + 3 for i, ch in enumerate(self._chars)}
        self._chars_by_id = {i: ch for ch, i in self._ids.items()}

    def __call__(self, text: str, add_special_tokens: bool = True):
        from types import SimpleNamespace

        ids = [self._ids.get(ch, 3) for ch in text]
        return SimpleNamespace(input_ids=([self.bos_token_id] if add_special_tokens else []) + ids)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False):
        return f"user: {messages[0]['content']} | assistant:"

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        special = {0: "<pad>", 1: "<s>", 2: "</s>"}
        return "".join(
            "" if (i in special and skip_special_tokens) else special.get(i, self._chars_by_id.get(i, "?")) for i in ids
        )

    def batch_decode(self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False):
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def get_vocab(self) -> dict[str, int]:
        return {**self._ids, "<pad>": 0, "<s>": 1, "</s>": 2}


def save_tiny_model_dir(path: Path, seed: int = 0, words: tuple[str, ...] = ()) -> Path:
    """Save a tiny random Llama with a real (word-level) HF tokenizer, as a local model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab_words = list(words) or [f"w{i}" for i in range(60)] + ["the", "capital", "of", "france", "is", "paris"]
    vocab = {tok: i for i, tok in enumerate(specials + vocab_words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    model = make_tiny_llama(seed=seed, vocab_size=len(vocab))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_adapter(model_dir: Path, out: Path, seed: int, use_dora: bool = False) -> Path:
    """A random LoRA (or DoRA) adapter on the tiny model in `model_dir`; rank and target modules vary with `seed`, so
    adapters of one run differ in shape as real ones may."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    modules = ["q_proj", "v_proj", "down_proj"] if seed % 2 else ["k_proj", "o_proj", "up_proj"]
    config = LoraConfig(
        r=2 + seed % 3, lora_alpha=5, target_modules=modules, init_lora_weights=False, use_dora=use_dora
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


def save_tiny_run(model_dir: Path, out: Path, steps: list[int], method: str = "npo") -> Path:
    """A run folder as core.unlearn.checkpoints writes it: checkpoint-<step>/ (adapter, manifest), run.json."""
    from core.common.cache import atomic_directory, atomic_write_json

    for step in steps:
        with atomic_directory(out / f"checkpoint-{step}", {"step": step}) as scratch:
            save_tiny_adapter(model_dir, scratch, seed=10 + step)
            atomic_write_json(scratch / "manifest.json", {"method": method, "step": step, "files": {}})
    atomic_write_json(out / "run.json", {"method": method, "checkpoints": sorted(steps)})
    return out


# ------------------------------------------------------------------------------------------ float32 tolerances

EPS32 = float(torch.finfo(torch.float32).eps)


def logit_tolerance(model, logits) -> float:
    """τ: how far the code's float32 logits may lie from a reference pass over the same weights (batched vs
    unbatched, padded, KV-cached, another SIMD width, BLAS kernel or thread count). Each of the model's L layers ends
    in sums over at most W = max(hidden, intermediate) products; reordering a float32 sum of W terms moves it by at most
    ~W·eps32 of its scale, and the logits come out of L such stages, so each computation is within ~L·W·eps32·max|z|
    of exact arithmetic, and the two compared within twice that. (Tiny models: L=2, W=64, max|z|≈0.44: τ≈1.3e-5;
    measured batched-vs-unbatched differences are ~1e-7.)"""
    config = model.config
    width = max(config.hidden_size, getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                or 4 * config.hidden_size)  # fmt: skip
    return 2 * config.num_hidden_layers * width * EPS32 * float(torch.as_tensor(logits).abs().max())


def rank_bounds(scores, target: int, tau: float) -> tuple[int, int]:
    """The 1-based ranks of `target` that any computation of `scores` (logits or log-probs, one position) with every
    entry within τ of these may give: a rival within 2τ of the target may land on either side of it."""
    z = torch.as_tensor(scores, dtype=torch.float64)
    gaps = torch.cat([z[:target], z[target + 1 :]]) - z[target]
    return 1 + int((gaps > 2 * tau).sum()), 1 + int((gaps > -2 * tau).sum())


def assert_topk_within(got_ids, scores, k: int, tau: float) -> None:
    """`got_ids` is a top-k of `scores` in descending order, up to rivals within 2τ of each other (see rank_bounds):
    k distinct ids, each no lower than the k-th best − 2τ, each no lower than the next − 2τ."""
    z = torch.as_tensor(scores, dtype=torch.float64)
    got = [int(i) for i in got_ids]
    assert len(got) == len(set(got)) == k, got
    kth = float(z.topk(k).values[-1])
    assert all(float(z[i]) >= kth - 2 * tau for i in got), (got, kth)
    assert all(float(z[a]) >= float(z[b]) - 2 * tau for a, b in itertools.pairwise(got)), got


def top_margin(scores) -> float:
    """Best minus second-best entry: a greedy or argmax decision is the same under any computation within τ of
    these scores when this exceeds 2τ (the precondition that makes an exact comparison of discrete outcomes fair)."""
    top = torch.as_tensor(scores, dtype=torch.float64).topk(2).values
    return float(top[0] - top[1])
