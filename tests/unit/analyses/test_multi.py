"""core.analyses.multi: a base against many models equals the two-model probe of every pair (tiny models).

Tolerance. The multi-model pass and a pairwise probe run the same float32 arithmetic in another order (the base
side once for all models, the adapters stacked over N blocks instead of two; tests/unit/models/test_n_sided_lora.py),
so each logit lies within τ = 2·L·W·eps32·max|z| of the other (tests/tiny_models.logit_tolerance). Log-softmax is
2-Lipschitz in the max norm (z_t − logsumexp z moves by at most |Δz_t| + max|Δz|), so log-probs agree within 2τ;
KL(p‖q) = Σ p (log p − log q) moves by at most 2τ per log term and by Σ|Δp|·max|log p − log q| ≤ 2τ·(max gap) from
the weights, bounded here by 2τ·(2 + 2·max|z|·2). Ranks are compared where no rival lies within 2τ of the target
(tests/tiny_models.rank_bounds on a plain reference pass), as the other probe tests do. Texts and ids are exact.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from tiny_models import logit_tolerance, rank_bounds, save_tiny_model_dir
from tiny_models import save_tiny_adapter as save_adapter
from tiny_models import save_tiny_run as save_run

from core.analyses import multi
from core.analyses.multi import ModelEntry, ModelSet, lens_across, probe_many, run_entries, score_many
from core.analyses.probe import ProbeRequest, ProbeResult, score
from core.common.errors import UserError
from core.models.pair import ModelPair
from core.models.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = {"dtype": "float32", "device": "cpu"}
REQUESTS = [ProbeRequest("the capital of france is", "paris"), ProbeRequest("w1 w2 w3", "w4 w5 the")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi")
    base = save_tiny_model_dir(root / "base")
    return {
        "base": base,
        "other": save_tiny_model_dir(root / "other", seed=1),  # a full model: its own backbone
        "a": save_adapter(base, root / "a", seed=1),
        "b": save_adapter(base, root / "b", seed=2),
        "dora": save_adapter(base, root / "dora", seed=3, use_dora=True),
        "run": save_run(base, root / "run", [10, 2, 4]),
    }


def spec(path: Path | str) -> ModelSpec:
    return ModelSpec(str(path), **OPTIONS)


def reference(pair: ModelPair, probe: ProbeResult) -> tuple[list[torch.Tensor], float]:
    """Each side's logits at the probe's scored positions from a plain unbatched pass, and τ for them."""
    from core.scoring.encoding import encode

    row = encode(pair.tokenizer, probe.prompt, probe.answer, probe.chat, pair.context_length,
                 score_end=bool(probe.end_tokens))  # fmt: skip
    ids = torch.tensor([row.input_ids])
    sides, tau = [], 0.0
    for side in ("base", "unlearned"):
        with pair.use(side) as model, torch.no_grad():
            logits = model(ids).logits[0, row.score_from - 1 : -1].double()
        tau = max(tau, logit_tolerance(model, logits))
        sides.append(logits)
    return sides, tau


def assert_same_probe(got: ProbeResult, want: ProbeResult, pair: ModelPair) -> None:
    assert (got.prompt, got.answer, got.chat, got.truncated) == (want.prompt, want.answer, want.chat, want.truncated)
    assert got.context_tokens == want.context_tokens
    assert [(t.position, t.token, t.token_id) for t in got.tokens] == [
        (t.position, t.token, t.token_id) for t in want.tokens
    ]
    assert (got.chat, got.end_tokens) == (want.chat, want.end_tokens)
    (base_logits, unlearned_logits), tau = reference(pair, want)
    z = float(max(base_logits.abs().max(), unlearned_logits.abs().max()))
    for i, (g, w) in enumerate(zip(got.tokens, want.tokens, strict=True)):
        for key in ("logprob_base", "logprob_unlearned", "delta", "entropy_base", "entropy_unlearned"):
            assert math.isclose(getattr(g, key), getattr(w, key), abs_tol=4 * tau), key
        assert math.isclose(g.kl, w.kl, abs_tol=2 * tau * (3 + 4 * z))
        for side, logits in (("base", base_logits), ("unlearned", unlearned_logits)):
            low, high = rank_bounds(logits[i], g.token_id, tau)
            assert low <= getattr(g, f"rank_{side}") <= high
            assert low <= getattr(w, f"rank_{side}") <= high


def pairwise(base: Path, entry: ModelEntry, backbone: Path) -> ModelPair:
    """The two-model pair of `base` and `entry` as the Probe page loads it (a DoRA adapter on the base's backbone
    included: test_pairwise_probe_of_a_dora_adapter_on_the_bases_backbone)."""
    return ModelPair.load(spec(base), entry.spec)


def dora_apart(folders: dict[str, Path], base: str = "base") -> ModelPair:
    """`base` against the DoRA adapter loaded on a backbone of its own (a PeftModel built by PEFT directly), so no
    pass of the pair can mix the two sides: the reference for the shared-backbone pair."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = ModelPair.load(spec(folders[base]), spec(folders[base]))
    dora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folders["base"]), str(folders["dora"]))
    with loaded.use("base") as model:
        return ModelPair.from_models(model, dora.eval(), loaded.tokenizer)


@pytest.mark.parametrize("base_name", ["base", "a"])
def test_pairwise_probe_of_a_dora_adapter_on_the_bases_backbone(folders, base_name):
    """PEFT refuses its mixed batch for DoRA ("Cannot pass `adapter_names` when DoRA is enabled"); the pair's joint
    pass then runs each side alone (core.models.adapters.mixed_batch_supported), with the same numbers as a DoRA
    model that shares nothing with the base."""
    from core.models.adapters import mixed_batch_supported

    shared = ModelPair.load(spec(folders[base_name]), spec(folders["dora"]))
    assert shared.shares_backbone
    with shared.joint() as joint:
        model, names = joint
        assert not mixed_batch_supported(model, names)
        assert mixed_batch_supported(model, [names[0]])  # the base side alone (no adapter, or plain LoRA "a")
    apart = dora_apart(folders, base_name)
    assert not apart.shares_backbone
    for got, want in zip(score(shared, REQUESTS, top_k=3), score(apart, REQUESTS, top_k=3), strict=True):
        assert_same_probe(got, want, apart)


def entries(folders: dict[str, Path]) -> list[ModelEntry]:
    singles = [ModelEntry(spec(folders[name]), name) for name in ("a", "b", "dora", "other")]
    return singles + run_entries(folders["run"], spec(folders["run"]))


@pytest.mark.parametrize("base_name", ["base", "a"])  # a plain backbone, or an adapter (the demo's target) as base
def test_many_models_equal_their_pairwise_probes(folders, base_name):
    models = ModelSet.load(spec(folders[base_name]), entries(folders))
    assert models.labels == ["a", "b", "dora", "other", "npo@2", "npo@4", "npo@10"]
    got = score_many(models, REQUESTS, top_k=3, batch_size=2)
    for i, entry in enumerate(models.entries):
        pair = pairwise(folders[base_name], entry, folders["base"])
        want = score(pair, REQUESTS, top_k=3)
        for g, w in zip(got[i], want, strict=True):
            assert_same_probe(g, w, pair)
    assert (
        models.parameter_bytes() < 2.5 * ModelPair.load(spec(folders["base"]), spec(folders["base"])).parameter_bytes()
    )


def test_stacked_passes_split_over_several_passes_give_the_same(folders, monkeypatch):
    models = ModelSet.load(spec(folders["base"]), entries(folders))
    whole = probe_many(models, REQUESTS[0])
    monkeypatch.setattr(multi.probe, "sides_per_pass", lambda models, rows, sides: 2)
    split = probe_many(models, REQUESTS[0])
    for i, (g, w) in enumerate(zip(split.results, whole.results, strict=True)):
        assert_same_probe(g, w, models.pair(i))
    assert whole.to_dict()["models"] == models.labels
    assert list(whole.to_dict()) == ["models", "results"]
    again = multi.MultiProbeResult.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert again.to_dict() == whole.to_dict()


def test_run_entries_are_in_step_order_with_the_runs_method(folders, tmp_path):
    found = run_entries(folders["run"], spec("x"))
    assert [(e.label, e.run, e.step) for e in found] == [
        ("npo@2", "npo", 2),
        ("npo@4", "npo", 4),
        ("npo@10", "npo", 10),
    ]
    assert [Path(e.spec.source).name for e in found] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        run_entries(tmp_path / "empty", spec("x"))
    with pytest.raises(UserError, match="not found"):
        run_entries(tmp_path / "nowhere", spec("x"))
    twice = multi.unique_labels([ModelEntry(spec("x"), "m"), ModelEntry(spec("y"), "m")])
    assert [e.label for e in twice] == ["m", "m (2)"]


def test_a_set_that_will_not_fit_is_refused_before_loading(folders, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from core.models import loading

    weights = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folders["base"]).parameters())
    adapter = sum(t.numel() for t in load_file(folders["a"] / "adapter_model.safetensors").values())
    specs = [multi.models.resolve_spec(spec(folders[name])) for name in ("base", "a", "a")]
    plan = multi.memory_plan(specs, torch.device("cpu"), torch.float32)
    assert (plan.parameters, plan.weight_bytes) == (weights + adapter, 4 * (weights + adapter))  # one backbone, once
    assert plan.fits and "1 backbone(s) and 1 adapter(s)" in plan.text()
    monkeypatch.setattr(loading, "available_memory", lambda device, spread=False: 1024)
    monkeypatch.setattr(loading, "load_backbone", lambda *a: pytest.fail("loaded a set that does not fit"))
    with pytest.raises(UserError, match="will not fit") as caught:
        ModelSet.load(spec(folders["base"]), entries(folders))
    assert "2 backbone(s) and 6 adapter(s)" in str(caught.value)


def test_lens_across_models_is_each_pairs_lens(folders):
    from core.analyses.lens import logit_lens

    models = ModelSet.load(spec(folders["base"]), entries(folders)[:2])
    lens = lens_across(models, *REQUESTS[0].__dict__.values())
    for i in range(2):
        want = logit_lens(models.pair(i), REQUESTS[0].prompt, REQUESTS[0].answer)
        assert lens.logprob[i] == pytest.approx(torch.tensor(want.unlearned.logprob).double().mean(1).tolist())
        assert lens.rank[i] == pytest.approx(torch.tensor(want.unlearned.rank).double().mean(1).tolist())
    assert lens.base_rank == pytest.approx(torch.tensor(want.base.rank).double().mean(1).tolist())
    assert lens.layers == list(range(3)) and lens.models == ["a", "b"]


def run_cli(*argv: str) -> dict:
    from core.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["probe", *argv, "--dtype", "float32", "--device", "cpu", "--json"]) == 0
    return json.loads(out.getvalue())


def test_cli_many_models_and_a_run_equal_the_pairwise_cli(folders):
    ask = ["--prompt", REQUESTS[0].prompt, "--answer", REQUESTS[0].answer, "--base", str(folders["base"])]
    many = run_cli(
        *ask, "--unlearned", str(folders["a"]), "--unlearned", str(folders["other"]), "--run", str(folders["run"])
    )
    assert many["models"] == [str(folders["a"]), str(folders["other"]), "npo@2", "npo@4", "npo@10"]
    paths = [folders["a"], folders["other"], *(folders["run"] / f"checkpoint-{s}" for s in (2, 4, 10))]
    for path, result in zip(paths, many["results"], strict=True):
        single = run_cli(*ask, "--unlearned", str(path))
        assert set(single) == set(result) and "models" not in single  # one --unlearned: today's output
        pair = pairwise(folders["base"], ModelEntry(spec(path), str(path)), folders["base"])
        assert_same_probe(ProbeResult.from_dict(result), ProbeResult.from_dict(single), pair)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_a_template_and_scored_end_tokens_as_the_pairwise_probe(folders, template):
    models = ModelSet.load(spec(folders["base"]), entries(folders)[:2])
    got = score_many(models, REQUESTS[:1], chat=template, score_end=True)
    for i, entry in enumerate(models.entries):
        pair = pairwise(folders["base"], entry, folders["base"])
        (want,) = score(pair, REQUESTS[:1], chat=template, score_end=True)
        assert want.chat == template
        assert_same_probe(got[i][0], want, pair)
