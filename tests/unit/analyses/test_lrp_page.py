"""The Attribution page says why an AttnLRP map does not add up: next to the map, a note naming the paper's softmax
rule and each side's share of the logit it keeps, as core's result gives it; none under the conserving CP rule."""

from __future__ import annotations

import pytest
from apptest_pages import ask, button, errors, open_with_pair

from core.analyses.attribution import AttributionSettings, attribute
from core.present import numbers

PROMPT, ANSWER = "the capital of france is", "paris w1 w2"


@pytest.fixture(autouse=True)
def isolated(fresh_app: None) -> None:
    """Fresh caches, walks, cache home and uploads (conftest.fresh_app)."""


def test_the_page_explains_attn_lrps_softmax_gap(tiny_pair_dirs) -> None:
    at, pair = open_with_pair("attribution", tiny_pair_dirs)
    ask(at, "attribution", PROMPT, ANSWER)
    at.selectbox(key="attribution_method").set_value("attn_lrp").run()
    at.selectbox(key="attribution_lrp_rule").set_value("attnlrp")
    button(at, "Compute").click().run()
    assert not at.exception and not errors(at), errors(at)
    direct = attribute(pair, PROMPT, ANSWER, "attn_lrp", chat=True, settings=AttributionSettings(lrp_rule="attnlrp"))
    notes = [info.value.replace("\\", "") for info in at.info if "softmax rule" in info.value]
    assert len(notes) == 1, [info.value for info in at.info]
    for side in ("base", "unlearned"):
        kept = -sum(direct.convergence_delta[side]) / sum(direct.explained[side])
        assert f"{side} {numbers.percent(kept, 0)}" in notes[0]
    assert "LRP rule cp" in notes[0]
    at.selectbox(key="attribution_lrp_rule").set_value("cp")
    button(at, "Compute").click().run()
    assert not [info for info in at.info if "softmax rule" in info.value]
