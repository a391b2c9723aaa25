"""Under a chat template the attacks score what the evaluation scores (open-unlearning's tokens: the answer, the
template's end-of-turn token and the appended EOS), so robustness's clean forget probability is the evaluation's
forget_Q_A_Prob, and an attacked prompt is scored the same way. Checked against a float64 hand computation on a tiny
model with a real tokenizer whose chat template closes every turn with an end-of-turn word."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.attacks.base import RobustnessSettings
from core.attacks.runner import run_attacks
from core.data.qa import QADataset, QAItem, SplitData
from core.evaluation.evaluate import EvalSettings, evaluate
from core.models.pair import ModelPair

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("user", "assistant", "<eot>", "who", "is", "ann", "bo", "cy", "tell", "me", "about", "?", "a", "poet", ".")
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} <eot> {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)
ITEMS = [
    QAItem(i, f"who is {name} ?", f"{name} is a poet .", paraphrased_question=f"tell me about {name} ?")
    for i, name in enumerate(("ann", "bo", "cy"))
]
# float32 forward passes (batched, padded) against one unbatched float64 log-softmax: each token log-prob is off by
# a few float32 ulps of the logits (|logit| < 10 on these random 32-wide models: ~1e-6), a probability ≤ 1 by less.
PROB_TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> ModelPair:
    folder = tmp_path_factory.mktemp("tiny")
    base_dir = save_tiny_model_dir(folder / "base", seed=0, words=WORDS)
    unlearned_dir = save_tiny_model_dir(folder / "unlearned", seed=1, words=WORDS)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.chat_template = TEMPLATE
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    unlearned = AutoModelForCausalLM.from_pretrained(unlearned_dir).eval()
    return ModelPair.from_models(base, unlearned, tokenizer)


def scored_probability(model: torch.nn.Module, tokenizer, question: str, answer: str) -> tuple[float, list[str]]:
    """Hand-built: the conversation rendered, the prompt rendered with its generation prompt, every token after the
    prompt scored, an EOS appended (open-unlearning's preprocess_chat_instance)."""
    user = {"role": "user", "content": question}
    prompt = tokenizer(tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False).input_ids  # fmt: skip
    chat = [user, {"role": "assistant", "content": answer}]
    full = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False).input_ids
    full = [*full, tokenizer.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
    picked = [float(logp[t - 1, full[t]]) for t in range(len(prompt), len(full))]
    return math.exp(sum(picked) / len(picked)), tokenizer.convert_ids_to_tokens(full[len(prompt) :])


def test_clean_and_attacked_probabilities_score_the_evaluation_s_tokens(pair: ModelPair) -> None:
    settings = RobustnessSettings(chat=True, batch_size=2)
    result = run_attacks(pair, ITEMS, attacks=["paraphrase"], settings=settings)
    for side, clean in (("base", result.base), ("unlearned", result.unlearned)):
        with pair.use(side) as model:
            hand = [scored_probability(model, pair.tokenizer, item.question, item.answer) for item in ITEMS]
        assert hand[0][1] == ["ann", "is", "a", "poet", ".", "<eot>", "</s>"]  # answer + end-of-turn + EOS
        assert clean == pytest.approx(np.mean([p for p, _ in hand]), abs=PROB_TOL)
        data = SplitData(forget=QADataset("tiny", "forget", ITEMS))
        logs = evaluate([(side, model, pair.tokenizer)], data, settings=EvalSettings(template="chat"), cache=False)
        assert clean == pytest.approx(logs.evaluation(side).logs["forget_Q_A_Prob"]["agg_value"], abs=PROB_TOL)
    attacked = next(o for o in result.outcomes if o.attack == "paraphrase")
    with pair.use("unlearned") as model:
        rewritten = [scored_probability(model, pair.tokenizer, i.paraphrased_question, i.answer)[0] for i in ITEMS]
    assert attacked.attacked_unlearned == pytest.approx(np.mean(rewritten), abs=PROB_TOL)


def test_the_answer_alone_would_differ(pair: ModelPair) -> None:
    """The end rows matter on this model: the answer-only probability (the attacks' old scoring) is not what they
    report now, so the test above tells the two apart."""
    result = run_attacks(pair, ITEMS, attacks=["paraphrase"], settings=RobustnessSettings(chat=True, batch_size=2))
    answer_only = []
    with pair.use("base") as model:
        for item in ITEMS:
            _, tokens = scored_probability(model, pair.tokenizer, item.question, item.answer)
            answer_only.append(answer_probability(model, pair.tokenizer, item.question, item.answer))
            assert len(tokens) == len(item.answer.split()) + 2
    assert abs(result.base - np.mean(answer_only)) > 10 * PROB_TOL  # 3.4e-4 apart on this model


def answer_probability(model: torch.nn.Module, tokenizer, question: str, answer: str) -> float:
    """exp(mean log p) of the answer's tokens alone after the generation prompt."""
    user = {"role": "user", "content": question}
    prompt = tokenizer(tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False).input_ids  # fmt: skip
    ids = prompt + tokenizer(answer, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    picked = [float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids))]
    return math.exp(sum(picked) / len(picked))
