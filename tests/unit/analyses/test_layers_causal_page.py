"""The Layers page's activation patching and depth score, driven through AppTest on a tiny random pair loaded from
disk: the chart and table hold core's numbers, the reading is shown, the lens table's numbers are readable."""

from __future__ import annotations

import json

import pytest
from apptest_pages import ask, button, charts, errors, open_with_pair

from core.analyses.patching import depth_over_sets, patch_curve
from core.data.examples import demo_examples
from core.present import numbers
from core.present.figures.layers import causal_reading, depth_reading

PROMPT, ANSWER = "the capital of france is", "paris w1 w2"


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


def test_patching_and_depth_draw_cores_numbers_and_read_them(tiny_pair_dirs) -> None:
    at, pair = open_with_pair("layers", tiny_pair_dirs)
    ask(at, "lens", PROMPT, ANSWER)
    button(at, "Run the logit lens").click().run()
    button(at, "Run activation patching").click().run()
    assert not at.exception and not errors(at), errors(at)
    direct = patch_curve(pair, PROMPT, ANSWER, chat=True)
    traces = charts(at)["patching_chart"]["data"]
    assert traces[0]["x"] == direct.layers
    assert traces[0]["y"] == pytest.approx(direct.patched_logprob, abs=1e-5)
    assert traces[1]["y"] == pytest.approx(direct.reverse_logprob, abs=1e-5)
    from core.analyses.lens import logit_lens

    reading = causal_reading(direct, logit_lens(pair, PROMPT, ANSWER, chat=True))
    assert reading in [element.value.replace("\\", "") for element in at.info]
    lens_table = next(df for df in at.dataframe if "top_token" in df.value.columns)
    columns = json.loads(lens_table.proto.columns)  # st.column_config as sent to the browser
    assert columns["prob"]["type_config"]["format"] == numbers.TABLE_PROBABILITY
    assert columns["logprob"]["type_config"]["format"] == numbers.TABLE_NUMBER

    at.number_input(key="depth_limit").set_value(1)
    button(at, "Compute depth scores").click().run()
    assert not at.exception and not errors(at), errors(at)
    examples = demo_examples()
    sets = {name: [(e.question, e.answer) for e in examples if e.split == name][:1] for name in ("forget", "retain")}
    expected = depth_over_sets(pair, sets, chat=True)
    boxes = charts(at)["depth_chart"]["data"]
    assert boxes[0]["y"] == pytest.approx(expected.sets["forget"].depth, abs=1e-5)
    assert depth_reading(expected) in [element.value.replace("\\", "") for element in at.info]
