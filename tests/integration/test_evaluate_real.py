"""Evaluation with real models: the embedded SmolLM2 against the probe engine, and the demo experiment's target,
oracle and unlearning run (the quick recipe, built once in a temporary cache home) against what unlearning means."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import core.evaluation.evaluate as evaluate_module
from core.analyses.probe import ProbeRequest, score
from core.data.qa import QADataset, SplitData, load_demo_splits
from core.evaluation.evaluate import EvalSettings, evaluate, evaluate_run, tofu
from core.evaluation.ingest import ingest
from core.evaluation.metrics import MIN_K_PLUS_PLUS_MIN_SIGMA
from core.evaluation.settings import MIA_SPLITS
from core.models.loading import load_backbone, load_tokenizer
from core.models.pair import ModelPair
from core.models.spec import ModelSpec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def first_items(data: SplitData, count: int) -> SplitData:
    return SplitData(**{name: QADataset(qa.name, qa.split, qa.items[:count]) for name, qa in data.splits().items()})


@pytest.fixture(scope="module")
def smollm(embedded_model_dir: Path) -> tuple[torch.nn.Module, object]:
    spec = ModelSpec(str(embedded_model_dir), device="cpu", dtype="float32")
    return load_backbone(spec, torch.device("cpu"), torch.float32), load_tokenizer(spec)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))


def test_smollm_answer_losses_equal_the_probe_engine(smollm) -> None:
    """The evaluation's scored tokens (answer, <|im_end|>, "\n", the appended EOS) are the probe's with its end rows."""
    model, tokenizer = smollm
    data = first_items(load_demo_splits(), 3)
    result = evaluate([("smollm", model, tokenizer)], data, settings=EvalSettings(batch_size=4), cache=False)
    pair = ModelPair.from_models(model, model, tokenizer)
    for split, prefix in (("forget", "forget"), ("world_facts", "wf")):
        items = getattr(data, split).items
        requests = [ProbeRequest(item.question, item.answer) for item in items]
        probed = score(pair, requests, chat="chat", score_end=True)
        assert all(probe.end_tokens == 3 for probe in probed)
        for item, probe in zip(items, probed, strict=True):
            want = -probe.answer_logprob_base / len(probe.tokens)
            got = result.evaluation("smollm").logs[f"{prefix}_Q_A_Prob"]["value_by_index"][str(item.index)]
            assert got["avg_loss"] == pytest.approx(want, abs=1e-4)


LOGP_TOL = 1e-4  # fp32 on a real model: padding changes matmul shapes, so log-probs move (measured ~1e-6)


def test_smollm_batching_invariance_and_round_trip(smollm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = smollm
    data = first_items(load_demo_splits(), 2)
    scored: list = []
    score_batch = evaluate_module.score_batch

    def recording(*args, **kwargs):
        scored.extend(out := score_batch(*args, **kwargs))
        return out

    monkeypatch.setattr(evaluate_module, "score_batch", recording)
    one = evaluate([("smollm", model, tokenizer)], data, settings=EvalSettings(batch_size=1), cache=False)
    tokens_one = {(s.split, s.item.index): s.answer for s in scored if s.split in MIA_SPLITS}
    scored.clear()
    many = evaluate([("smollm", model, tokenizer)], data, settings=EvalSettings(batch_size=8), out_dir=tmp_path,
                    cache=False)  # fmt: skip
    tokens_many = {(s.split, s.item.index): s.answer for s in scored if s.split in MIA_SPLITS}
    items_one, items_many = one.items(), many.items()
    assert items_one["metric"].tolist() == items_many["metric"].tolist()
    z_scored = items_one["metric"].str.startswith("mia_min_k_plus_plus/").to_numpy()
    np.testing.assert_allclose(items_one["value"][~z_scored], items_many["value"][~z_scored], rtol=1e-4, atol=LOGP_TOL)
    # Min-K%++ divides by σ (clamped at 1e-3), so its error is the log-prob error over σ: its inputs are checked at
    # the log-prob tolerance t, and the score at the bound they propagate to. With |δ log p|, |δμ|, |δσ| ≤ t,
    # z = (log p − μ)/s moves by |δ log p − δμ − z·δs| / (s + δs) ≤ (2t + |z|·t) / (s − t) (the clamp s = max(σ, 1e-3)
    # moves no more than σ), and the mean of the lowest k% of the z's by no more than the largest move.
    assert tokens_one.keys() == tokens_many.keys() and tokens_one
    for (split, index), a in tokens_one.items():
        b = tokens_many[split, index]
        for name in ("logp", "mu", "sigma"):
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=0, atol=LOGP_TOL, err_msg=name)
        s = np.maximum(a.sigma, MIN_K_PLUS_PLUS_MIN_SIGMA)
        bound = float(np.max((2 * LOGP_TOL + np.abs((a.logp - a.mu) / s) * LOGP_TOL) / (s - LOGP_TOL)))
        got = [r.evaluation("smollm").logs["mia_min_k_plus_plus"][split]["value_by_index"][str(index)]["score"]
               for r in (one, many)]  # fmt: skip
        assert got[0] == pytest.approx(got[1], abs=bound), (split, index, bound)
    read = ingest([tmp_path])
    frame = read.summary.drop(columns="source").sort_values("metric").reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, many.to_frame().sort_values("metric").reset_index(drop=True))
    assert many.evaluation("smollm").logs["world_facts/acc"]["agg_value"] >= 0.75  # the base model knows them


# ------------------------------------------------------------------------------------------ open-unlearning's numbers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "open-unlearning"
OU_ITEMS = 6  # the first six items of each demo split (tests/fixtures/open-unlearning/README.md)
OU_TOL = 1e-4
OU_NEW_TOKENS = 32  # the fixtures' generation length (their README: open-unlearning's default 200, cut for 2 cores)
OU_SPLITS = ("forget", "retain", "holdout", "real_authors", "world_facts")


def _numbers(entry: object, path: str = "") -> Iterator[tuple[str, object]]:
    """(path, leaf) of an EVAL entry, items keyed by their position (open-unlearning keys them 0..n−1, we by index)."""
    if isinstance(entry, dict):
        for key, value in entry.items():
            if key == "value_by_index":
                value = dict(enumerate(value.values()))
            yield from _numbers(value, f"{path}/{key}")
    elif isinstance(entry, list):
        for i, value in enumerate(entry):
            yield from _numbers(value, f"{path}[{i}]")
    else:
        yield path, entry


@pytest.mark.parametrize(("folder", "template"), [("smollm2_chat", "chat"), ("smollm2_tags", "phi-1.5")])
def test_numbers_equal_open_unlearning_s_evaluator(smollm, folder: str, template: str) -> None:
    """Every metric open-unlearning's evaluator wrote for SmolLM2 on the demo data (its own code, run offline: the
    fixture's README) equals ours within 1e-4, item by item, with its attention mask; generations are equal texts."""
    import json

    model, tokenizer = smollm
    demo = load_demo_splits()
    data = SplitData(**{name: QADataset(qa.name, qa.split, qa.items[:OU_ITEMS]) for name, qa in demo.splits().items()})
    settings = EvalSettings(template=template, rouge=True, max_new_tokens=OU_NEW_TOKENS, gradnorm=True,
                            batch_size=32, generation_batch_size=32).open_unlearning()  # fmt: skip
    ours = evaluate([("smollm", model, tokenizer)], data, settings=settings, cache=False).evaluation("smollm").logs
    theirs = json.loads((FIXTURES / folder / "TOFU_EVAL.json").read_text(encoding="utf-8"))
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    compared = 0
    for name, entry in theirs.items():
        mine = dict(_numbers(ours[name]))
        for path, value in _numbers(entry):
            if path.endswith(("/input", "/ground_truth")):
                continue  # the texts open-unlearning decodes back from tokens; the numbers are compared
            assert path in mine, (name, path)
            if isinstance(value, str) or value is None:
                assert mine[path] == value, (name, path)
            else:
                assert mine[path] == pytest.approx(value, abs=OU_TOL, rel=OU_TOL), (name, path)
                compared += 1
    assert compared > 300
    assert {"forget_Q_A_PERT_ROUGE", "model_utility"} <= set(theirs)


def test_muse_knowmem_and_verbmem_equal_open_unlearning_s_evaluator(smollm) -> None:
    """open-unlearning's MUSE evaluator (KnowMem with its in-context examples, VerbMem) on the fixture's MUSE-shaped
    demo data: every generation the same text, every ROUGE number within 1e-4 (they are ratios of word counts of
    equal texts, so equal), for the tag template MUSE's base models use and for the chat template."""
    import json

    from core.data.qa import load_split_folder
    from core.evaluation.muse import muse_logs
    from core.scoring.templates import load_template

    model, tokenizer = smollm
    muse = load_split_folder(FIXTURES / "muse_data").muse
    assert set(muse.knowmem_icl) == {"forget", "retain"}
    settings = EvalSettings(rouge=True, generation_batch_size=16).open_unlearning()
    for folder, template in (("muse_smollm2_tags", "phi-1.5"), ("muse_smollm2_chat", "chat")):
        ours = muse_logs(model, tokenizer, muse, load_template(template), settings)
        theirs = json.loads((FIXTURES / folder / "MUSE_EVAL.json").read_text(encoding="utf-8"))
        assert set(theirs) == set(ours) == {"forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE"}
        for name, entry in theirs.items():
            mine = dict(_numbers(ours[name]))
            for path, value in _numbers(entry):
                if path.endswith(("/input", "/ground_truth")):
                    continue
                if isinstance(value, str):
                    assert mine[path] == value, (folder, name, path)
                else:
                    assert mine[path] == pytest.approx(value, abs=OU_TOL, rel=OU_TOL), (folder, name, path)


# ------------------------------------------------------------------------------------------ demo (quick recipe)


def ks_statistic(sample: list[float], reference: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs, over the pooled values."""
    pooled = np.concatenate([sample, reference])
    cdfs = [np.searchsorted(np.sort(x), pooled, side="right") / len(x) for x in (sample, reference)]
    return float(np.max(np.abs(cdfs[0] - cdfs[1])))


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Iterator[Path]:
    """A cache home (the embedded model linked in, not copied) where `demo:NAME` is the quick demo experiment."""
    from core.models.embedded import MODEL_DIRNAME

    home = tmp_path_factory.mktemp("demo-home")
    (home / "models").mkdir()
    (home / "models" / MODEL_DIRNAME).symlink_to(embedded_model_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ULENS_HOME", str(home))
        patch.setenv("ULENS_DEMO_QUICK", "1")
        yield home


@pytest.fixture
def demo_env(demo_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ULENS_HOME", str(demo_home))
    monkeypatch.setenv("ULENS_DEMO_QUICK", "1")
    return demo_home


@pytest.fixture(scope="module")
def quick_demo(demo_home: Path, embedded_model_dir: Path) -> object:
    """The quick experiment's target, oracle and npo run. Its base folder is given explicitly: core.unlearn.demo
    names runs
    by a key that (as of this writing) changes once a lazily found base folder is known, mid-build."""
    from core.unlearn.demo import DemoExperiment

    experiment = DemoExperiment(base_dir=embedded_model_dir)
    experiment.build(["target", "oracle", "npo"])
    return experiment


def test_demo_oracle_has_forgotten_what_the_target_knows(demo_env) -> None:
    from core.unlearn.demo import DemoExperiment

    for name in ("target", "oracle"):  # built ahead by fresh experiments: building inside spec() meets the key change
        DemoExperiment().build([name])
    data = evaluate_module.demo_eval_data(DemoExperiment())
    models = [ModelSpec.parse("demo:target"), ModelSpec.parse("demo:oracle")]
    result = evaluate(models, data, oracle="oracle")
    target, oracle = (result.evaluation(name).logs for name in ("target", "oracle"))
    assert oracle["forget_Q_A_Prob"]["agg_value"] < target["forget_Q_A_Prob"]["agg_value"]
    # Forget quality is the KS-test p-value between the two models' forget truth ratios. On the quick experiment's
    # 6 forget items it takes a few values only (D = 1: 0.0022, 5/6: 0.026, 4/6: 0.143, ...), so a bound like
    # p < 0.05 (D ≥ 5/6) fails as soon as one item's ratio crosses one of the other model's (D moves by 1/6), which
    # training on another CPU may do. Asserted on the statistic instead: D ≥ 2/3 (p ≤ 0.143 on 6 + 6): the two
    # empirical distributions stay two thirds apart, with room for one item to land on the other side; and the
    # reported p is the KS p-value of these ratios.
    ratios = {name: [r["score"] for r in logs["forget_truth_ratio"]["value_by_index"].values()]
              for name, logs in (("target", target), ("oracle", oracle))}  # fmt: skip
    assert ks_statistic(ratios["target"], ratios["oracle"]) >= 2 / 3 - 1e-12, ratios
    reported = target["forget_quality"]["agg_value"]
    assert reported == pytest.approx(stats.ks_2samp(ratios["target"], ratios["oracle"]).pvalue, rel=1e-12)
    assert oracle["forget_quality"]["agg_value"] == 1.0
    assert [e.method for e in result.evaluations] == ["target", "oracle"]


def test_demo_run_checkpoints_are_evaluated_in_place(demo_env, quick_demo) -> None:
    run = quick_demo.run_dir("npo")
    seen: list[int] = []
    result = evaluate_run(run, first_items(quick_demo.data, 2), progress=lambda done, total, label: seen.append(done))
    steps = list(quick_demo.checkpoints("npo"))
    assert [e.step for e in result.evaluations] == steps
    assert {e.method for e in result.evaluations} == {"NPO"}
    assert all((run / f"checkpoint-{step}" / "evals" / "TOFU_EVAL.json").is_file() for step in steps)
    assert seen[-1] == len(seen)
    assert sorted(ingest([run]).runs()["step"].tolist()) == steps


def test_demo_pipeline_evaluation_writes_every_model(demo_env, quick_demo, monkeypatch, tmp_path: Path) -> None:
    from core.unlearn.demo import DemoExperiment

    built = replace(quick_demo.recipe, stages=tuple(s for s in quick_demo.recipe.stages if quick_demo.is_built(s.name)))
    experiment = DemoExperiment(built, base_dir=quick_demo.base_dir)
    monkeypatch.setattr(evaluate_module, "demo_eval_data", lambda experiment: first_items(experiment.data, 2))
    fractions: list[float] = []
    tofu(experiment, tmp_path, lambda fraction, message: fractions.append(fraction))
    read = ingest([tmp_path])
    assert set(read.summary["model"]) == {"base", "target", "oracle", "npo"}
    assert sorted(read.runs().dropna()["step"]) == list(experiment.checkpoints("npo"))
    assert fractions[-1] == 1.0
    fq = read.summary[(read.summary["metric"] == "forget_quality") & (read.summary["model"] == "oracle")]
    assert fq["value"].tolist() == [1.0]
