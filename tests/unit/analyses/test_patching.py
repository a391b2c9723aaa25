"""Activation patching on tiny models of every family the layer view reads: the invariants any correct patching
satisfies (a model against itself; after the last block; pairs differing only in some blocks), the batched rows
against one pass per layer, and the ratios and depth scores against hand-worked numbers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core.analyses.patching import (
    GAP_FLOOR,
    depth_over_sets,
    depth_score,
    erasure_ratio,
    naive_patched_logprobs,
    oracle_depth_score,
    patch_curve,
    patched_logprobs,
    record,
    recovery_ratio,
)
from core.common.errors import UserError
from core.models.pair import ModelPair
from tests.tiny_models import TinyTokenizer, logit_tolerance, make_tiny_llama

LAYERS = 4


def _gpt2(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=128, tie_word_embeddings=False)
    return GPT2LMHeadModel(config).eval()


def _neox(seed: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return GPTNeoXForCausalLM(config).eval()


BUILDERS = {
    "llama": lambda seed: make_tiny_llama(seed, layers=LAYERS),
    "gpt2": _gpt2,
    "gpt-neox": _neox,
}
PROMPT, ANSWER = "The capital of Ruritania", " is Strelsau."


def _blocks(model):
    from core.analyses.lens.architecture import decoder_layers

    return decoder_layers(model)


def _changed(model, blocks: tuple[int, ...], seed: int = 7):
    """A copy of `model` whose decoder blocks `blocks` (0-based) are perturbed, everything else shared."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for index in blocks:
            for param in _blocks(other)[index].parameters():
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return other


def _tolerance(model) -> float:
    """A log-prob computed in a batch of rows vs alone: each logit within τ (logit_tolerance), so a log-softmax
    within 2τ, and so the mean over answer tokens."""
    tokenizer = TinyTokenizer()
    ids = torch.tensor([tokenizer(PROMPT + ANSWER).input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return 2 * logit_tolerance(model, logits)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_model_against_itself_gives_a_flat_curve_at_its_own_logprob(family):
    model = BUILDERS[family](0)
    result = patch_curve(ModelPair.from_models(model, model, TinyTokenizer()), PROMPT, ANSWER)
    tol = _tolerance(model)
    assert result.layers == list(range(LAYERS + 1))
    assert result.base_logprob == result.unlearned_logprob
    for curve in (result.patched_logprob, result.reverse_logprob):
        assert max(abs(v - result.base_logprob) for v in curve) <= tol


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("positions", ["all", "answer"])
def test_a_pair_differing_in_some_blocks_patches_exactly_around_them(family, positions):
    base = BUILDERS[family](0)
    unlearned = _changed(base, (1, 2))  # blocks 2 and 3 (layers l = 2, 3 in the curve's 1-based numbering)
    result = patch_curve(ModelPair.from_models(base, unlearned, TinyTokenizer()), PROMPT, ANSWER, positions=positions)
    tol = _tolerance(base)
    assert abs(result.base_logprob - result.unlearned_logprob) > 100 * tol  # the blocks do change the answer
    forward, reverse = result.patched_logprob, result.reverse_logprob
    for layer in (0, 1):  # before the first changed block: the streams are equal, nothing changes
        assert abs(forward[layer] - result.unlearned_logprob) <= tol
        assert abs(reverse[layer] - result.base_logprob) <= tol
    if positions == "all":  # after the last changed block, the later blocks, norm and head are the same
        for layer in (3, LAYERS):
            assert abs(forward[layer] - result.base_logprob) <= tol
            assert abs(reverse[layer] - result.unlearned_logprob) <= tol
        assert result.erasure[0] == result.erasure[1] == 0.0
        full = erasure_ratio([result.unlearned_logprob], result.base_logprob, result.unlearned_logprob)[0]
        assert result.erasure[3] == pytest.approx(full, abs=tol / GAP_FLOOR)
        assert result.erasure[4] == pytest.approx(full, abs=tol / GAP_FLOOR)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_patching_after_the_last_layer_gives_the_base_logprob(family):
    base = BUILDERS[family](0)
    other = BUILDERS[family](1)  # different blocks everywhere; final norm and head copied from the base
    for name in ("lm_head", "embed_out"):
        if hasattr(base, name):
            setattr(other, name, copy.deepcopy(getattr(base, name)))
    from core.analyses.lens.architecture import final_norm

    final_norm(other).load_state_dict(final_norm(base).state_dict())
    result = patch_curve(ModelPair.from_models(base, other, TinyTokenizer()), PROMPT, ANSWER)
    assert abs(result.patched_logprob[-1] - result.base_logprob) <= _tolerance(base)
    assert abs(result.reverse_logprob[-1] - result.unlearned_logprob) <= _tolerance(base)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_batched_rows_equal_one_pass_per_layer(family):
    base = BUILDERS[family](0)
    unlearned = _changed(base, (0, 3))
    tokenizer = TinyTokenizer()
    ids = torch.tensor(tokenizer(PROMPT + ANSWER).input_ids)
    p = len(tokenizer(PROMPT).input_ids)
    source = record(base, ids, p)
    where = torch.arange(len(ids))
    batched = patched_logprobs(unlearned, ids, p, source.states, where)
    chunked = patched_logprobs(unlearned, ids, p, source.states, where, batch_rows=2)
    naive = naive_patched_logprobs(unlearned, ids, p, source.states, where)
    assert batched.shape == (LAYERS + 1, len(ids) - p)
    assert (batched - naive).abs().max() <= _tolerance(base)
    assert (chunked - naive).abs().max() <= _tolerance(base)


def test_answer_positions_patch_only_the_scored_positions():
    """Patching every block's stream at the scored positions only: a change confined to the prompt's earlier
    positions still reaches the answer through attention, so the curve differs from patching everything."""
    base = make_tiny_llama(0, layers=LAYERS)
    unlearned = _changed(base, (0,))
    pair = ModelPair.from_models(base, unlearned, TinyTokenizer())
    everywhere = patch_curve(pair, PROMPT, ANSWER, positions="all")
    answer_only = patch_curve(pair, PROMPT, ANSWER, positions="answer")
    # at layer 1 with every position the base's stream is the whole input of blocks 2..L: the base's output
    assert abs(everywhere.patched_logprob[1] - everywhere.base_logprob) <= _tolerance(base)
    # at the scored positions only, the unlearned prompt positions still feed attention: not the base's output
    assert abs(answer_only.patched_logprob[1] - answer_only.base_logprob) > 100 * _tolerance(base)


def test_ratios_and_depth_against_hand_worked_numbers():
    # m_B = -1, m_U = -3: gap 2 nats/token
    assert recovery_ratio([-3.0, -2.0, -1.0, 0.0], -1.0, -3.0) == [0.0, 0.5, 1.0, 1.0]
    erasure = erasure_ratio([-1.0, -1.5, -3.0, -4.0], -1.0, -3.0)
    assert erasure == [0.0, 0.25, 1.0, 1.0]
    assert depth_score(erasure) == pytest.approx((0.25 + 1 + 1) / 3)
    # a gap below the floor is divided by the floor, not by itself
    assert erasure_ratio([-1.0, -1.1], -1.0, -1.2) == pytest.approx([0.0, 0.1 / GAP_FLOOR])
    # oracle: κ = m_B - o(l) = [2, 0.1, 3] at l = 1..3; only l = 1, 3 carry a gap ≥ ln 2
    # unlearned erases m_B - r(l) = [1, 5, 4] → clip to κ: [1, ·, 3] → (1 + 3) / (2 + 3)
    assert oracle_depth_score([-1.0, -2.0, -6.0, -5.0], [-1.0, -3.0, -1.1, -4.0], -1.0) == pytest.approx(4 / 5)
    assert oracle_depth_score([-1.0, -2.0], [-1.0, -1.0], -1.0) is None
    assert math.isclose(GAP_FLOOR, math.log(2))


def test_an_oracle_gives_the_two_stage_score():
    base = make_tiny_llama(0, layers=LAYERS)
    unlearned = _changed(base, (1,))
    pair = ModelPair.from_models(base, unlearned, TinyTokenizer())
    oracle_pair = ModelPair.from_models(unlearned, unlearned, TinyTokenizer())  # the oracle: the unlearned itself
    result = patch_curve(pair, PROMPT, ANSWER, reference=lambda: oracle_pair.use("base"))
    assert result.oracle_logprob == pytest.approx(result.unlearned_logprob, abs=_tolerance(base))
    tol = _tolerance(base)
    assert max(abs(a - b) for a, b in zip(result.oracle_patched_logprob, result.reverse_logprob, strict=True)) <= tol
    if result.base_logprob - result.unlearned_logprob >= GAP_FLOOR:
        assert result.oracle_depth_score == pytest.approx(1.0)


def test_depth_over_sets_scores_each_item_and_averages():
    base = make_tiny_llama(0, layers=LAYERS)
    unlearned = _changed(base, (0,))
    pair = ModelPair.from_models(base, unlearned, TinyTokenizer())
    sets = {"forget": [(PROMPT, ANSWER), ("Who wrote it", " Anthony Hope.")], "retain": [("Sky is", " blue.")]}
    seen = []
    result = depth_over_sets(pair, sets, progress=lambda fraction, message: seen.append(fraction))
    assert seen == [1 / 3, 2 / 3, 1.0]
    for name, items in sets.items():
        got = result.sets[name]
        single = [patch_curve(pair, prompt, answer) for prompt, answer in items]
        assert got.depth == pytest.approx([s.depth_score for s in single])
        assert got.mean_depth == pytest.approx(sum(got.depth) / len(got.depth))
    assert type(result).from_json(result.to_json()) == result


def test_bad_requests_are_user_errors():
    model = make_tiny_llama(0)
    pair = ModelPair.from_models(model, model, TinyTokenizer())
    with pytest.raises(UserError, match="answer is empty"):
        patch_curve(pair, PROMPT, " ")
    with pytest.raises(UserError, match="positions"):
        patch_curve(pair, PROMPT, ANSWER, positions="middle")
    with pytest.raises(UserError, match="non-empty"):
        depth_over_sets(pair, {"forget": []})


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    import argparse

    from core.cli.lens import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lens", *argv])
    status = args.handler(args)
    return status, capsys.readouterr().out


def test_cli_patching_and_depth_views_equal_the_library(tmp_path, capsys):
    import json

    from core.analyses.patching import DepthResult, PatchingResult
    from core.models.spec import ModelSpec
    from tests.cli_args import pair_args
    from tests.tiny_models import save_tiny_model_dir

    base, unlearned = save_tiny_model_dir(tmp_path / "a", seed=0), save_tiny_model_dir(tmp_path / "b", seed=1)
    argv = [*pair_args(base, unlearned, "the capital of france is", "paris"), "--view", "patching"]
    status, out = _run_cli([*argv, "--json", "--oracle", str(base)], capsys)
    payload = json.loads(out)
    assert status == 0 and payload["layers"] == [0, 1, 2] and len(payload["patched_logprob"]) == 3
    pair = ModelPair.load(ModelSpec(str(base)), ModelSpec(str(unlearned)))
    direct = patch_curve(pair, "the capital of france is", "paris")
    got = PatchingResult.from_dict(payload)
    assert got.patched_logprob == pytest.approx(direct.patched_logprob, abs=1e-5)
    assert got.base_logprob == pytest.approx(direct.base_logprob, abs=1e-5)
    assert got.oracle_logprob == pytest.approx(direct.base_logprob, abs=1e-5)  # the oracle given is the base
    status, table = _run_cli(argv, capsys)
    assert status == 0 and "depth score" in table and len(table.splitlines()) == 3 + 2
    forget, retain = tmp_path / "f.jsonl", tmp_path / "r.jsonl"
    forget.write_text(json.dumps({"question": "the capital of", "answer": "paris"}) + "\n")
    retain.write_text(json.dumps({"question": "france is", "answer": "the"}) + "\n")
    sets = ["--view", "depth", "--forget", str(forget), "--retain", str(retain), "--base", str(base)]
    status, out = _run_cli([*sets, "--unlearned", str(unlearned), "--json"], capsys)
    depth = DepthResult.from_dict(json.loads(out))
    expected = depth_over_sets(pair, {"forget": [("the capital of", "paris")], "retain": [("france is", "the")]})
    assert depth.sets["forget"].depth == pytest.approx(expected.sets["forget"].depth, abs=1e-6)
    with pytest.raises(UserError, match="--oracle"):
        _run_cli([*pair_args(base, unlearned, "a", "b"), "--oracle", str(base)], capsys)
