"""MUSE KnowMem / VerbMem computed from a split folder's files, against greedy generation and rouge-score run
directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer
from tiny_models import TinyTokenizer, make_tiny_llama, save_tiny_model_dir

from core.common.errors import UserError
from core.data.qa import load_split_folder
from core.evaluation.evaluate import EvalSettings, evaluate
from core.evaluation.muse import KNOWMEM_TOKENS, VERBMEM_TOKENS


def write(folder: Path) -> None:
    folder.mkdir()
    knowmem = [{"question": f"Who is {name}?", "answer": f"{name} is a poet."} for name in ("Ann", "Bo")]
    (folder / "forget_knowmem.jsonl").write_text("".join(json.dumps(r) + "\n" for r in knowmem))
    verbmem = [{"prompt": "Once upon a time", "gt": " there was a king."}, {"prompt": "It was", "gt": " late."}]
    (folder / "forget_verbmem.jsonl").write_text("".join(json.dumps(r) + "\n" for r in verbmem))
    (folder / "forget.jsonl").write_text(json.dumps({"index": 0, "question": "q?", "answer": "a."}) + "\n")


def greedy(model: torch.nn.Module, tokenizer: TinyTokenizer, ids: list[int], tokens: int) -> str:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False, pad_token_id=0,
                             eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    new = out[0, len(ids) :].tolist()
    new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    return tokenizer.decode(new, skip_special_tokens=True)


def test_knowmem_and_verbmem_are_rouge_l_f1_of_greedy_generations(tmp_path: Path) -> None:
    write(tmp_path / "data")
    data = load_split_folder(tmp_path / "data")
    model, tokenizer = make_tiny_llama(seed=0), TinyTokenizer()
    settings = EvalSettings(template="plain", rouge=True, generation_batch_size=1, rouge_splits=())
    logs = evaluate([("m", model, tokenizer)], data, settings=settings, cache=False).evaluation("m").logs
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    knowmem = logs["forget_knowmem_ROUGE"]
    for i, item in enumerate(data.muse.knowmem["forget"]):
        record = knowmem["value_by_index"][str(i)]
        prompt = tokenizer(item.question).input_ids
        text = greedy(model, tokenizer, prompt, KNOWMEM_TOKENS)
        for stop in ("\n\n", "\nQuestion", "Question:"):
            text = text.split(stop)[0]
        assert record["generation"] == text.strip()
        assert record["rougeL_f1"] == pytest.approx(scorer.score(item.answer, text.strip())["rougeL"].fmeasure)
    verbmem = logs["forget_verbmem_ROUGE"]
    values = []
    for i, (prompt, truth) in enumerate(data.muse.verbmem):
        record = verbmem["value_by_index"][str(i)]
        text = greedy(model, tokenizer, tokenizer(prompt).input_ids, VERBMEM_TOKENS)
        assert record["generation"] == text.strip()  # stripped, as open-unlearning's eval_text_similarity
        values.append(scorer.score(truth, text.strip())["rougeL"].fmeasure)
        assert record["rougeL_f1"] == pytest.approx(values[-1])
    assert verbmem["agg_value"] == pytest.approx(sum(values) / len(values))


def test_a_bad_verbmem_line_is_a_user_error(tmp_path: Path) -> None:
    write(tmp_path / "data")
    (tmp_path / "data" / "forget_verbmem.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(UserError, match="'prompt' and 'gt'"):
        load_split_folder(tmp_path / "data")


ICL = [("Cy?", "Baker."), ("Di?", "Pilot.")]  # short: the tiny model reads 128 characters


def write_icl(folder: Path) -> None:
    write(folder)
    records = [{"question": question, "answer": answer} for question, answer in ICL]
    (folder / "forget_knowmem_icl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def knowmem_generations(model, tokenizer, folder: Path, template: str) -> tuple[list, dict]:
    data = load_split_folder(folder)
    settings = EvalSettings(template=template, rouge=True, generation_batch_size=2, rouge_splits=())
    logs = evaluate([("m", model, tokenizer)], data, settings=settings, cache=False).evaluation("m").logs
    return data.muse.knowmem["forget"].items, logs["forget_knowmem_ROUGE"]["value_by_index"]


def cut(text: str) -> str:
    for stop in ("\n\n", "\nQuestion", "Question:"):
        text = text.split(stop)[0]
    return text.strip()


def test_knowmem_puts_the_in_context_examples_before_each_question_in_tag_format(tmp_path: Path) -> None:
    """open-unlearning's tag path (preprocess_chat_instance, apply_chat_template False): every in-context pair as
    user_start + q + user_end + asst_start + a + asst_end, then the question, one text tokenised with specials."""
    write_icl(tmp_path / "data")
    model, tokenizer = make_tiny_llama(seed=1), TinyTokenizer()
    items, records = knowmem_generations(model, tokenizer, tmp_path / "data", "phi-1.5")
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in ICL)
    for i, item in enumerate(items):
        ids = tokenizer(shots + f"Question: {item.question}\nAnswer: ").input_ids
        assert records[str(i)]["generation"] == cut(greedy(model, tokenizer, ids, KNOWMEM_TOKENS))
        assert records[str(i)]["input"] == tokenizer.decode(ids, skip_special_tokens=True)


def test_knowmem_in_context_examples_are_earlier_chat_turns(tmp_path: Path) -> None:
    """With a chat template, the in-context pairs are earlier user/assistant turns of one conversation, rendered
    with the generation prompt (a real HF tokenizer whose template prints every message)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    words = ("Who", "is", "Ann", "Bo", "Cy", "Di", "?", "a", "poet", "baker", "pilot", ".", "user", "assistant")
    folder = save_tiny_model_dir(tmp_path / "model", seed=2, words=words)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    data = tmp_path / "data"
    data.mkdir()
    knowmem = [{"question": f"Who is {name} ?", "answer": f"{name} is a poet ."} for name in ("Ann", "Bo")]
    (data / "forget_knowmem.jsonl").write_text("".join(json.dumps(r) + "\n" for r in knowmem))
    icl = [
        {"question": "Who is Cy ?", "answer": "Cy is a baker ."},
        {"question": "Who is Di ?", "answer": "Di is a pilot ."},
    ]
    (data / "forget_knowmem_icl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in icl))
    (data / "forget.jsonl").write_text(
        json.dumps({"index": 0, "question": "Who is Ann ?", "answer": "a poet ."}) + "\n"
    )
    items, records = knowmem_generations(model, tokenizer, data, "chat")
    for i, item in enumerate(items):
        chat = [m for r in icl for m in ({"role": "user", "content": r["question"]},
                                         {"role": "assistant", "content": r["answer"]})]  # fmt: skip
        text = tokenizer.apply_chat_template(
            [*chat, {"role": "user", "content": item.question}], tokenize=False, add_generation_prompt=True
        )
        assert text.startswith("user Who is Cy ? assistant Cy is a baker . user Who is Di ?")
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert records[str(i)]["generation"] == cut(greedy(model, tokenizer, ids, KNOWMEM_TOKENS))
        assert records[str(i)]["input"] == tokenizer.decode(ids, skip_special_tokens=True)
