"""Templates and open-unlearning's scored tokens: each sequence against one written out by hand with a real (word
level) HF tokenizer, the shipped template files, the legacy chat flag, and the pad-token attention mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import EPS32, TinyTokenizer, logit_tolerance, make_tiny_llama, save_tiny_model_dir
from transformers import AutoTokenizer

from core.common.errors import UserError
from core.scoring.encoding import Encoded, collate, encode
from core.scoring.forward import selected_logits, shared_prefix_logits
from core.scoring.statistics import token_statistics
from core.scoring.templates import (
    Template,
    default_for_specs,
    default_template_name,
    list_templates,
    load_template,
    resolve_template,
)

WORDS = tuple(["question", "answer", "q", "a1", "a2", "a3", "sys", "user", "bot", "end", "date2025", ":", "||"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A word-level tokenizer (whitespace split) with a chat template that renders a system turn, the date string
    and an end-of-turn word after every turn; eos = </s>."""
    folder = save_tiny_model_dir(tmp_path_factory.mktemp("tok"), words=WORDS)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = (
        "{% if date_string is defined %}date2025 {% endif %}"
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} end {% endfor %}"
        "{% if add_generation_prompt %}bot : {% endif %}"
    )
    return tok


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def test_shipped_templates_load_and_name_the_field_s_models() -> None:
    names = list_templates()
    for wanted in ("chat", "plain", "llama-2-chat", "llama-3-instruct", "phi-1.5", "zephyr", "qwen2.5", "gemma"):
        assert wanted in names
    for name in names:
        template = load_template(name)
        assert template.name == name and template.description
    assert load_template("phi-1.5").kind == "tags" and load_template("qwen2.5").kind == "chat"


def test_chat_template_sequence_is_the_whole_conversation_plus_eos(tokenizer) -> None:
    template = Template("t", "chat", system_prompt="sys", date_string="x")
    sequence, start, stop = template.sequence(tokenizer, "q", "a1 a2")
    # written out: the date word, the system turn, the user turn, the assistant turn with its end word, then </s>
    whole = ids(tokenizer, "date2025 system : sys end user : q end assistant : a1 a2 end")
    prompt = ids(tokenizer, "date2025 system : sys end user : q end bot :")
    assert sequence == [*whole, tokenizer.eos_token_id]
    assert start == len(prompt)
    assert stop == len(whole) - 1  # the answer's two words end before "end"


def test_tag_template_tokenises_prompt_and_answer_as_one_text(tokenizer) -> None:
    template = Template("t", "tags", user_start_tag="question : ", user_end_tag=" ", asst_start_tag="answer : ")
    sequence, start, stop = template.sequence(tokenizer, "q", "a1")
    with_specials = tokenizer("question : q answer : a1").input_ids  # add_special_tokens=True, as open-unlearning
    assert sequence == [*with_specials, tokenizer.eos_token_id]
    assert start == len(tokenizer("question : q answer : ").input_ids)
    assert stop == len(with_specials)  # open-unlearning adds no end tag after the answer: only the EOS follows
    row = encode(tokenizer, "q", "a1", template=template, score_end=True)
    assert row.end_tokens == 1 and row.input_ids[-1] == tokenizer.eos_token_id


def test_no_second_eos_when_the_sequence_already_ends_with_one(tokenizer) -> None:
    template = Template("t", "tags", asst_end_tag="")
    sequence, _, stop = template.sequence(tokenizer, "q", "a1 </s>")
    assert sequence[-1] == tokenizer.eos_token_id and sequence[-2] != tokenizer.eos_token_id
    assert stop == len(sequence) - 1  # the answer's own EOS is its end row


def test_encode_scores_the_end_tokens_only_when_asked(tokenizer) -> None:
    template = Template("t", "chat")
    answer_only = encode(tokenizer, "q", "a1 a2", template=template)
    with_end = encode(tokenizer, "q", "a1 a2", template=template, score_end=True)
    assert with_end.input_ids[: len(answer_only.input_ids)] == answer_only.input_ids
    assert with_end.input_ids[len(answer_only.input_ids) :] == [*ids(tokenizer, "end"), tokenizer.eos_token_id]
    assert (answer_only.end_tokens, with_end.end_tokens) == (0, 2)
    assert tokenizer.decode(answer_only.input_ids[answer_only.score_from :]) == "a1 a2"


def test_plain_is_the_demo_format_and_appends_nothing() -> None:
    tok = TinyTokenizer()
    row = encode(tok, "Q?", "A.", template="plain", score_end=True)
    assert row.input_ids == tok("Q?").input_ids + tok(" A.", add_special_tokens=False).input_ids
    assert row.end_tokens == 0
    assert encode(tok, "Q?", "A.", chat=False) == encode(tok, "Q?", "A.", template="plain")


def test_the_legacy_chat_flag_is_the_chat_or_plain_template(tokenizer) -> None:
    assert encode(tokenizer, "q", "a1", chat=True) == encode(tokenizer, "q", "a1", template="chat")
    assert resolve_template(True).name == "chat" and resolve_template(False).name == "plain"
    assert resolve_template("phi-1.5") == load_template("phi-1.5")


def test_template_files_accept_open_unlearning_template_args(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"apply_chat_template": False, "user_start_tag": "Q: ", "asst_start_tag": "A: "}))
    template = load_template(path)
    assert (template.name, template.kind, template.user_start_tag) == ("mine", "tags", "Q: ")
    path.write_text(json.dumps({"apply_chat_template": True, "system_prompt": "be brief", "stray": 1}))
    with pytest.raises(UserError, match="unknown field"):
        load_template(path)
    with pytest.raises(UserError, match="unknown template"):
        load_template("no-such-template")


def test_a_chat_template_needs_a_tokenizer_with_one() -> None:
    tok = TinyTokenizer()
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        encode(tok, "q", "a", template="chat")


def test_defaults_plain_for_the_demo_models_chat_for_instruct_models(tmp_path: Path, tokenizer) -> None:
    assert default_for_specs(["demo:npo"], tokenizer) == "plain"
    assert default_template_name(tokenizer) == "chat"
    assert default_template_name(None) == "plain"
    run = tmp_path / "checkpoint-3"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"training": {"chat": False}}))
    assert default_for_specs([str(run)], tokenizer) == "plain"
    (run / "manifest.json").write_text(json.dumps({"training": {"chat": "phi-1.5"}}))
    assert default_for_specs([str(run)], tokenizer) == "phi-1.5"


# ------------------------------------------------------------------------------------------ pad-token mask


def test_pad_mask_masks_every_pad_id_inside_a_row() -> None:
    rows = [Encoded([5, 0, 6, 7], 2), Encoded([5, 6], 1)]
    plain = collate(rows, pad_id=0, device=torch.device("cpu"))
    quirk = collate(rows, pad_id=0, device=torch.device("cpu"), pad_mask=True)
    assert plain.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert quirk.attention_mask.tolist() == [[1, 0, 1, 1], [1, 1, 0, 0]]


def test_shared_prefix_pass_with_the_pad_mask_equals_the_full_pass() -> None:
    torch.manual_seed(0)
    model = make_tiny_llama(seed=3)
    pad = 2  # the pad id is also the end-of-turn id inside the rows, as SmolLM2's <|im_end|>
    prompt = [1, 9, 2, 11, 12]
    rows = [Encoded([*prompt, 20, 2, 21], 5), Encoded([*prompt, 22, 23], 5), Encoded([1, 30, 2, 31, 32], 3)]
    device = torch.device("cpu")
    with torch.no_grad():
        logits, targets = shared_prefix_logits(model, rows, pad, device, pad_mask=True)
        batch = collate(rows, pad, device, pad_mask=True)
        full = selected_logits(model, batch)
        unmasked = selected_logits(model, collate(rows, pad, device))
    assert torch.equal(targets, batch.targets)
    tau = logit_tolerance(model, full)
    torch.testing.assert_close(logits, full, atol=tau, rtol=0)
    assert (full - unmasked).abs().max() > 100 * tau  # the mask changes the numbers: the test can tell


# ------------------------------------------------------------------------------------------ statistics


def test_min_k_plus_plus_moments_are_exact_on_confident_rows() -> None:
    """μ = Σ p log p on a row where one token holds all but ~e^-40 of the mass: the float64 reference is ≈ −40·e^-40;
    Σ p·z − lse in float32 loses it to cancellation (|z| ~ 40, eps32·40 ≈ 5e-6)."""
    z = torch.full((1, 1000), -20.0)
    z[0, 0] = 30.0
    z[0, 1:500] = 10.0
    reference = torch.log_softmax(z.double(), dim=-1)
    mu_ref = float((reference.exp() * reference).sum())
    got = token_statistics(z, torch.tensor([0]), True)
    assert abs(float(got["mu"][0]) - mu_ref) <= 4 * EPS32 * abs(mu_ref) + 1e-12
    variance_ref = float((reference.exp() * (reference - mu_ref) ** 2).sum())
    assert float(got["sigma"][0]) == pytest.approx(variance_ref**0.5, rel=4 * EPS32)


def test_model_dtype_log_probs_are_the_bf16_log_softmax() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(9, 64, generator=generator) * 5).bfloat16()
    targets = torch.randint(0, 64, (9,), generator=generator)
    got = token_statistics(logits, targets, False, model_dtype_logp=True, chunk_rows=4)
    expected = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0].float()
    assert torch.equal(got["logp"], expected)
    # open-unlearning's evaluate_probability: cross-entropy over [batch, V, tokens] logits, whatever the chunking
    cross_entropy = torch.nn.functional.cross_entropy(logits.T[None], targets[None], reduction="none")[0]
    assert torch.equal(got["loss_logp"], -cross_entropy.float())
    high = token_statistics(logits, targets, False)["logp"]
    exact = torch.log_softmax(logits.double(), dim=-1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(high.double(), exact, atol=8 * EPS32 * float(exact.abs().max()) + 1e-6, rtol=0)
