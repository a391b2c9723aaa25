"""Tiny random models and tokenizers for the unit tier (imported by tests; fixtures live in conftest.py)."""

from __future__ import annotations

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
