"""Figures of the attribution and layer views on results from a tiny random Llama pair: every plotted number against
the result (recomputed independently where it is derived), labels escaped, repeated tokens kept apart."""

from __future__ import annotations

import copy
import html
import math

import pytest
import torch
from tiny_models import TinyTokenizer, make_tiny_llama

from core.analyses.attribution import AttributionSettings, attribute
from core.analyses.lens import LensResult, LensSide, hidden_state_drift, logit_lens, weight_change
from core.common.errors import UserError
from core.models.pair import ModelPair
from core.present.figures.attribution import attribution_heatmap, attribution_matrix_figure
from core.present.figures.common import token_label
from core.present.figures.layers import (
    HIDDEN_RANK,
    drift_figure,
    hidden_knowledge_reading,
    logit_lens_figure,
    weight_change_figure,
)

# The character tokenizer makes every character a token: repeated tokens and HTML-looking ones.
PROMPT, ANSWER = "a <b> & a", "paris."
FORGET = [("the capital of france is", "paris"), ("gold is", "au")]
RETAIN = [("two plus two is", "four")]


@pytest.fixture(scope="module")
def pair() -> ModelPair:
    return ModelPair.from_models(make_tiny_llama(seed=0), make_tiny_llama(seed=1), TinyTokenizer())


@pytest.fixture(scope="module")
def result(pair):
    return attribute(pair, PROMPT, ANSWER, settings=AttributionSettings(per_token=True, baseline="eos", n_steps=8))


def escaped(text: str) -> str:
    return html.escape(text)


# ---------------------------------------------------------------------------------------------- attribution


def test_token_label_escapes_and_shows_invisible_characters():
    assert token_label("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert token_label("a&b\n") == "a&amp;b↵"
    assert token_label("\t") == "→" and token_label("") == "∅"


def test_heatmap_rows_are_the_whole_answer_maps(result):
    """Each row = the sum of the per-token rows (the answer's log-prob is their sum); Δ row = unlearned − base."""
    figure = attribution_heatmap(result)
    assert [trace.name for trace in figure.data] == ["base", "unlearned", "delta"]
    for trace, side in zip(figure.data, ("base", "unlearned", "delta"), strict=True):
        matrix = getattr(result, side)
        sums = [sum(row[f] for row in matrix) for f in range(len(result.prompt_tokens))]
        assert list(trace.z[0]) == pytest.approx(sums, abs=1e-12)
    base, unlearned, delta = (list(trace.z[0]) for trace in figure.data)
    assert delta == pytest.approx([u - b for u, b in zip(unlearned, base, strict=True)], abs=1e-6)


def test_heatmap_keeps_repeated_tokens_apart_and_escaped(result):
    tokens = result.prompt_tokens
    assert len(set(tokens)) < len(tokens) and "<" in tokens and "&" in tokens  # the case under test
    figure = attribution_heatmap(result)
    for trace in figure.data:
        assert list(trace.x) == list(range(len(tokens)))
        assert all("<" not in text for text in trace.text[0])
    axis = figure.layout.xaxis3  # the shared axis is labelled under the bottom row
    assert list(axis.tickvals) == list(range(len(tokens)))
    assert list(axis.ticktext) == [escaped(t) for t in tokens]


def test_heatmap_colour_scales_are_symmetric_around_zero(result):
    figure = attribution_heatmap(result)
    rows = {trace.name: list(trace.z[0]) for trace in figure.data}
    sides = max(abs(v) for v in rows["base"] + rows["unlearned"])
    delta = max(abs(v) for v in rows["delta"])
    assert (figure.layout.coloraxis.cmin, figure.layout.coloraxis.cmax) == pytest.approx((-sides, sides))
    assert (figure.layout.coloraxis2.cmin, figure.layout.coloraxis2.cmax) == pytest.approx((-delta, delta))
    assert [trace.coloraxis for trace in figure.data] == ["coloraxis", "coloraxis", "coloraxis2"]


@pytest.mark.parametrize("side", ["base", "unlearned", "delta"])
def test_matrix_figure_is_the_result_matrix(result, side):
    figure = attribution_matrix_figure(result, side)
    (trace,) = figure.data
    assert [list(row) for row in trace.z] == getattr(result, side)
    assert len(trace.z) == len(result.answer_tokens) and result.answer_tokens == list(" " + ANSWER)
    assert list(figure.layout.yaxis.ticktext) == [escaped(t) for t in result.answer_tokens]
    assert list(figure.layout.xaxis.ticktext) == [escaped(t) for t in result.prompt_tokens]
    assert figure.layout.yaxis.autorange == "reversed"  # the first answer token on top
    limit = max(abs(v) for row in getattr(result, side) for v in row)
    assert (trace.zmin, trace.zmax) == pytest.approx((-limit, limit))
    assert all("<" not in cell for row in trace.text for cell in row)


def test_matrix_figure_unknown_side(result):
    with pytest.raises(UserError, match="unknown side 'oracle'"):
        attribution_matrix_figure(result, "oracle")


# ---------------------------------------------------------------------------------------------- logit lens


def test_lens_lines_are_mean_rank_and_probability(pair):
    lens = logit_lens(pair, PROMPT, ANSWER)
    figure = logit_lens_figure(lens)
    assert len(figure.data) == 4  # per side: rank, probability
    n = len(lens.answer_tokens)
    for side, (rank_trace, prob_trace) in zip(("base", "unlearned"), (figure.data[:2], figure.data[2:]), strict=True):
        side_lens: LensSide = getattr(lens, side)
        assert list(rank_trace.x) == lens.layers
        assert list(rank_trace.y) == pytest.approx([sum(row) / n for row in side_lens.rank])
        assert list(prob_trace.y) == pytest.approx([math.exp(sum(row) / n) for row in side_lens.logprob])
        assert rank_trace.name.startswith(side)
    assert figure.layout.yaxis.type == "log" and figure.layout.yaxis.autorange == "reversed"


def test_lens_by_token_draws_each_answer_token(pair):
    lens = logit_lens(pair, PROMPT, ANSWER)
    figure = logit_lens_figure(lens, by_token=True)
    n = len(lens.answer_tokens)
    assert len(figure.data) == 2 * 2 * n
    for t in range(n):
        rank_trace = figure.data[2 * t]
        assert list(rank_trace.y) == [row[t] for row in lens.base.rank]
        assert rank_trace.name == f"base · {t}: {escaped(lens.answer_tokens[t])}"
        prob_trace = figure.data[2 * (n + t) + 1]
        assert list(prob_trace.y) == pytest.approx([math.exp(row[t]) for row in lens.unlearned.logprob])


def synthetic_lens(unlearned_logprob: list[list[float]], unlearned_rank: list[list[int]]) -> LensResult:
    layers = list(range(len(unlearned_rank)))
    base = LensSide(
        logprob=[[-5.0, -5.0]] + [[-0.1, -0.2]] * (len(layers) - 1),
        rank=[[50, 50]] + [[1, 1]] * (len(layers) - 1),
        top_token=[["a", "b"]] * len(layers),
    )
    unlearned = LensSide(unlearned_logprob, unlearned_rank, [["a", "b"]] * len(layers))
    return LensResult("p", "a b", False, ["a", "b"], layers, base, unlearned)


def test_hidden_knowledge_is_read_in_words_and_marked():
    """Unlearned: #1 at layer 2 (mean log-prob −0.5), mean rank 35 at the output (−5): 4.5 nats per token hidden."""
    lens = synthetic_lens([[0.0, 0.0], [-3.0, -1.0], [-0.5, -0.5], [-6.0, -4.0]], [[1, 1], [9, 2], [1, 1], [40, 30]])
    reading = hidden_knowledge_reading(lens)
    assert reading.hidden and reading.final_mean_rank == 35.0
    assert reading.text.startswith(
        "The unlearned model still ranks the answer #1 at layer 2 and suppresses it only in the last layers: "
        "#35 at the output (layer 3), 4.50 nats per token lost after layer 2"
    )
    figure = logit_lens_figure(lens)
    assert [shape.x0 for shape in figure.layout.shapes] == [2, 2]  # the peak marked on both panels
    assert "layer 2" in figure.layout.annotations[-1].text


OUTPUT_PEAK = (
    [[0.0, 0.0], [-3.0, -1.0], [-0.5, -0.5], [-0.1, -0.1]],
    [[1, 1], [9, 2], [1, 1], [1, 1]],
    "The unlearned model gives the answer its highest probability at its output",
)
LOW_PEAK = (
    [[0.0, 0.0], [-9.0, -9.0], [-5.0, -5.0], [-9.0, -9.0]],
    [[1, 1], [60, 60], [20, 20], [60, 60]],
    "The unlearned model's answer peaks at layer 2 (#20)",
)


@pytest.mark.parametrize(("logprob", "rank", "start"), [OUTPUT_PEAK, LOW_PEAK])
def test_no_hidden_knowledge_no_mark(logprob, rank, start):
    lens = synthetic_lens(logprob, rank)
    reading = hidden_knowledge_reading(lens)
    assert not reading.hidden and reading.text.startswith(start)
    assert reading.unlearned.peak_mean_rank > HIDDEN_RANK or reading.unlearned.score == 0
    assert not logit_lens_figure(lens).layout.shapes


# ---------------------------------------------------------------------------------------------- drift and weights


def test_drift_lines_are_the_result_per_set(pair):
    drift = hidden_state_drift(pair, {"<forget>": FORGET, "retain": RETAIN}, batch_size=2)
    figure = drift_figure(drift)
    assert len(figure.data) == 2 * 3
    for i, (name, values) in enumerate(drift.sets.items()):
        for j, panel in enumerate(("cosine", "norm_change", "distance")):
            trace = figure.data[3 * i + j]
            assert list(trace.x) == drift.layers and list(trace.y) == getattr(values, panel)
            assert trace.name == f"{escaped(name)} ({len(FORGET if i == 0 else RETAIN)} items)"


def test_weight_map_is_the_one_changed_parameter():
    """Unlearned = base with noise on one matrix: that cell is ‖noise‖/‖W‖, every other cell is 0."""
    base = make_tiny_llama(seed=0)
    unlearned = copy.deepcopy(base)
    torch.manual_seed(3)
    weight = unlearned.model.layers[1].mlp.down_proj.weight
    noise = 0.01 * torch.randn_like(weight)
    with torch.no_grad():
        weight += noise
    expected = (noise.double().norm() / base.model.layers[1].mlp.down_proj.weight.double().norm()).item()
    figure = weight_change_figure(weight_change(ModelPair.from_models(base, unlearned, TinyTokenizer())))
    (trace,) = figure.data
    modules, columns = list(figure.layout.yaxis.ticktext), list(trace.x)
    assert columns == ["0", "1", "other"]
    assert {"mlp.down_proj.weight", "self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight"} <= set(
        modules
    )
    outside = {name for name, _ in base.named_parameters() if ".layers." not in name}
    changed = modules.index("mlp.down_proj.weight"), columns.index("1")
    for m, row in enumerate(trace.z):
        for c, value in enumerate(row):
            if (m, c) == changed:
                assert value == pytest.approx(expected, rel=1e-6)
            elif (columns[c] == "other") == (modules[m] in outside):
                assert value == 0.0
            else:
                assert value is None  # a layer module has no "other" cell, an outside parameter no layer cells


def test_weight_map_of_two_models_equals_direct_norms(pair):
    result = weight_change(pair)
    figure = weight_change_figure(result)
    (trace,) = figure.data
    modules, columns = list(figure.layout.yaxis.ticktext), list(trace.x)
    models = {}
    for side in ("base", "unlearned"):
        with pair.use(side) as model:
            models[side] = dict(model.named_parameters())
    for name, w in models["base"].items():
        direct = ((models["unlearned"][name] - w).double().norm() / w.double().norm()).item()
        parts = name.split(".")
        module, column = (".".join(parts[3:]), parts[2]) if parts[1] == "layers" else (name, "other")
        assert trace.z[modules.index(module)][columns.index(column)] == pytest.approx(direct, rel=1e-9)


def test_weight_map_empty_result_is_a_user_error():
    from core.analyses.lens import WeightChangeResult

    with pytest.raises(UserError, match="empty"):
        weight_change_figure(WeightChangeResult([]))
