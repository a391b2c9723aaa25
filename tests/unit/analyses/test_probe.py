"""Probe engine on a tiny random Llama: every statistic against a plain position-by-position reference."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from tiny_models import TinyTokenizer, assert_topk_within, logit_tolerance, make_tiny_llama, rank_bounds, top_margin

from core.analyses.probe import GenerationSettings, ProbeRequest, ProbeResult, generate, score
from core.common.errors import UserError
from core.models.pair import ModelPair
from core.scoring.encoding import collate, encode, encode_ids
from core.scoring.forward import selected_logits, shared_prefix_logits

REQUESTS = [
    ProbeRequest("the quick brown fox", "jumps over"),
    ProbeRequest("a much longer prompt that needs padding in a batch", "yes"),
    ProbeRequest("hello", " world, again and again"),
    ProbeRequest("no answer here, score the prompt itself"),
]


def reference_stats(model: torch.nn.Module, ids: list[int], start: int) -> list[dict]:
    """Unbatched forward; for each scored position, statistics computed one position at a time in numpy. Ranks and
    the top-k order are tie-aware: the code's batched float32 logits may differ from these by τ (logit_tolerance:
    2 layers × width 64 × eps32 × max|z| × 2 ≈ 1.3e-5 here), so a rival logit within 2τ of the target (seed 0 has
    one 5.4e-7 away, 'jumps over' position 21) may fall on either side of it on another machine."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double().numpy()
    tau = logit_tolerance(model, logits)
    rows = []
    for position in range(start, len(ids)):
        z = logits[position - 1]
        logp = z - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
        target = ids[position]
        rows.append(
            {
                "logp": logp[target],
                "rank_bounds": rank_bounds(logp, target, tau),
                "entropy": float(-np.sum(np.exp(logp) * logp)),
                "logp_full": logp,
                "tau": tau,
            }
        )
    return rows


@pytest.fixture
def two_model_pair():
    tokenizer = TinyTokenizer()
    return ModelPair.from_models(make_tiny_llama(seed=0), make_tiny_llama(seed=1), tokenizer), tokenizer


def test_statistics_match_reference(two_model_pair):
    pair, tokenizer = two_model_pair
    results = score(pair, REQUESTS, top_k=4, batch_size=8)
    token_ids = {tokenizer.decode([i]): i for i in range(len(tokenizer.get_vocab()))}
    for request, result in zip(REQUESTS, results, strict=True):
        row = encode(tokenizer, request.prompt, request.answer, max_length=128)
        with pair.use("base") as base:
            ref_b = reference_stats(base, row.input_ids, row.score_from)
        with pair.use("unlearned") as unlearned:
            ref_u = reference_stats(unlearned, row.input_ids, row.score_from)
        assert len(result.tokens) == len(row.input_ids) - row.score_from
        for tok, rb, ru in zip(result.tokens, ref_b, ref_u, strict=True):
            assert tok.logprob_base == pytest.approx(rb["logp"], abs=1e-4)
            assert tok.logprob_unlearned == pytest.approx(ru["logp"], abs=1e-4)
            assert tok.delta == pytest.approx(ru["logp"] - rb["logp"], abs=1e-4)
            for rank, ref in ((tok.rank_base, rb), (tok.rank_unlearned, ru)):
                low, high = ref["rank_bounds"]
                assert low <= rank <= high, (rank, low, high)
            assert tok.entropy_base == pytest.approx(rb["entropy"], abs=1e-4)
            assert tok.entropy_unlearned == pytest.approx(ru["entropy"], abs=1e-4)
            p_b = np.exp(rb["logp_full"])
            assert tok.kl == pytest.approx(float(np.sum(p_b * (rb["logp_full"] - ru["logp_full"]))), abs=1e-4)
            top_ids = [token_ids[t] for t, _ in tok.topk_base]
            assert_topk_within(top_ids, rb["logp_full"], 4, rb["tau"])
            assert [p for _, p in tok.topk_base] == pytest.approx(np.exp(rb["logp_full"][top_ids]), abs=1e-5)
        assert result.answer_logprob_base == pytest.approx(sum(r["logp"] for r in ref_b), abs=1e-3)


def test_padding_invariance(two_model_pair):
    pair, _ = two_model_pair
    batched = score(pair, REQUESTS, batch_size=len(REQUESTS))
    for request, together in zip(REQUESTS, batched, strict=True):
        alone = score(pair, [request], batch_size=1)[0]
        got = np.array([[t.logprob_base, t.logprob_unlearned, t.entropy_base, t.kl] for t in together.tokens])
        want = np.array([[t.logprob_base, t.logprob_unlearned, t.entropy_base, t.kl] for t in alone.tokens])
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_same_model_gives_zero_shift():
    model = make_tiny_llama(seed=3)
    pair = ModelPair.from_models(model, model, TinyTokenizer())
    for result in score(pair, REQUESTS):
        for tok in result.tokens:
            assert tok.delta == 0.0
            assert tok.kl == pytest.approx(0.0, abs=1e-6)
            assert tok.rank_base == tok.rank_unlearned


def test_prompt_only_scores_every_token_after_the_first(two_model_pair):
    pair, tokenizer = two_model_pair
    result = score(pair, [ProbeRequest("abcdef")])[0]
    ids = tokenizer("abcdef").input_ids
    assert [t.token_id for t in result.tokens] == ids[1:]
    assert "".join(t.token for t in result.tokens) == "abcdef"


def test_over_long_prompt_is_truncated_and_flagged(two_model_pair):
    pair, tokenizer = two_model_pair
    prompt = "x" * 200 + "END"
    result = score(pair, [ProbeRequest(prompt, "ok")], max_length=40)[0]
    assert result.truncated
    assert len(result.context_tokens) == 40 - len(tokenizer(" ok", add_special_tokens=False).input_ids)
    assert "".join(result.context_tokens).endswith("END")
    assert not score(pair, [ProbeRequest("short", "ok")], max_length=40)[0].truncated


@pytest.mark.parametrize(
    ("prompt", "answer", "message"),
    [("", None, "prompt is empty"), ("   ", "a", "prompt is empty"), ("hi", "  ", "answer is empty")],
)
def test_bad_input_is_a_user_error(two_model_pair, prompt, answer, message):
    pair, _ = two_model_pair
    with pytest.raises(UserError, match=message):
        score(pair, [ProbeRequest(prompt, answer)])


def test_answer_longer_than_context_is_refused(two_model_pair):
    pair, _ = two_model_pair
    with pytest.raises(UserError, match="more than the context"):
        score(pair, [ProbeRequest("hi", "y" * 60)], max_length=40)


def test_json_round_trip(two_model_pair):
    pair, _ = two_model_pair
    result = score(pair, REQUESTS[:1])[0]
    again = ProbeResult.from_json(result.to_json())
    assert again == result
    frame = result.to_frame()
    assert list(frame["delta"]) == pytest.approx([t.delta for t in result.tokens])


def test_chat_template_wraps_the_prompt(two_model_pair):
    pair, _ = two_model_pair
    result = score(pair, [ProbeRequest("hi", "yo")], chat=True)[0]
    assert "".join(result.context_tokens) == "user: hi | assistant:"


def test_greedy_generation_picks_rank_one_tokens_and_is_cross_scored(two_model_pair):
    pair, _ = two_model_pair
    out = generate(pair, "hello there", chat=False, settings=GenerationSettings(max_new_tokens=6))
    assert len(out.base_scored.tokens) == 6
    prompt = encode(pair.tokenizer, "hello there").input_ids
    for side, scored in (("base", out.base_scored), ("unlearned", out.unlearned_scored)):
        new = [t.token_id for t in scored.tokens]
        with pair.use(side) as model, torch.no_grad():
            logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1 : -1]
        # precondition: at every step the reference's best token leads the next by more than 2τ, so greedy
        # decoding and rank 1 are the same on every machine (seed 0/1: margins ≥ 4.9e-4, τ ≈ 1.3e-5)
        tau = logit_tolerance(model, logits)
        assert min(top_margin(z) for z in logits) > 2 * tau
        assert logits.argmax(dim=-1).tolist() == new
        assert all(getattr(t, f"rank_{side}") == 1 for t in scored.tokens)
    assert out.base_scored.answer == out.base_text


def test_sampled_generation_is_reproducible_with_a_seed(two_model_pair):
    pair, _ = two_model_pair
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, seed=7, temperature=1.5)
    first = generate(pair, "hello", chat=False, settings=settings)
    again = generate(pair, "hello", chat=False, settings=settings)
    assert (first.base_text, first.unlearned_text) == (again.base_text, again.unlearned_text)


def test_concurrent_probes_equal_solo_results(two_model_pair):
    pair, _ = two_model_pair
    solo = [score(pair, [r])[0] for r in REQUESTS]
    found: dict[int, ProbeResult] = {}

    def work(i: int) -> None:
        for _ in range(3):
            found[i] = score(pair, [REQUESTS[i]])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(REQUESTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, result in enumerate(solo):
        assert [t.logprob_unlearned for t in found[i].tokens] == pytest.approx(
            [t.logprob_unlearned for t in result.tokens], abs=1e-5
        )


def test_shared_prefix_logits_equal_the_full_pass():
    """Rows sharing a prompt (different prompt lengths, answers of different lengths, a one-token answer, a row
    alone with its prompt) give the logits and targets of one full right-padded pass, row by row."""
    model = make_tiny_llama(seed=3).eval()
    rows = [
        encode_ids([5, 6, 7], [20, 21, 22, 23]),
        encode_ids([5, 6, 7], [30]),
        encode_ids([9, 10, 11, 12, 13, 14], [40, 41]),
        encode_ids([5, 6, 7], [50, 51, 52, 53, 54, 55, 56]),
        encode_ids([9, 10, 11, 12, 13, 14], [60, 61, 62]),
        encode_ids([3, 4], [70, 71]),
    ]
    with torch.no_grad():
        full = collate(rows, 0, torch.device("cpu"))
        expected = selected_logits(model, full)
        logits, targets = shared_prefix_logits(model, rows, 0, torch.device("cpu"))
    torch.testing.assert_close(targets, full.targets, atol=0, rtol=0)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_shared_prefix_logits_fall_back_without_shared_prompts():
    model = make_tiny_llama(seed=3).eval()
    rows = [encode_ids([5, 6, 7], [20, 21]), encode_ids([8, 9], [30, 31, 32])]
    calls = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs.get("past_key_values")),
                                with_kwargs=True)  # fmt: skip
    with torch.no_grad():
        logits, targets = shared_prefix_logits(model, rows, 0, torch.device("cpu"))
        expected = selected_logits(model, collate(rows, 0, torch.device("cpu")))
    assert calls == [None, None]  # one plain pass each, no cache
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)
    assert targets.tolist() == [20, 21, 30, 31, 32]
