"""The `--ray` flag of `evaluate`, `unlearn` and `robustness` on the local two-CPU Ray instance: the same files as
the command without it, a rerun that trains nothing, failures as one error after the others finished, and a clear
message where ray is not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sweep_inputs import WORDS, assert_close, result_files, word_splits, write_split_folder
from tiny_models import EPS32, save_tiny_model_dir

from core.attacks.runner import RobustnessResult
from core.cli import main
from core.sweep.store import STORE_FOLDER

pytestmark = pytest.mark.usefixtures("one_thread", "ray_cluster")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULENS_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return save_tiny_model_dir(root / "base", seed=0, words=WORDS), save_tiny_model_dir(root / "other", 1, WORDS)


def test_evaluate_ray_writes_what_evaluate_writes_and_reports_a_failure_last(pair, tmp_path, capsys) -> None:
    base, other = pair
    data = write_split_folder(word_splits(), tmp_path / "data")
    common = ["evaluate", "--model", str(base), "--model", str(other), "--data", str(data), "--oracle", "base"]
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    single = capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    swept = capsys.readouterr().out
    assert swept.splitlines()[0] == single.splitlines()[0] and "forget_quality" in swept  # the same table
    assert_close(result_files(tmp_path / "ray"), result_files(tmp_path / "single"))
    assert len(result_files(tmp_path / "ray")) == 4

    missing = tmp_path / "no-such-model"
    argv = [*common, "--model", str(missing), "--out", str(tmp_path / "ray"), "--ray"]
    assert main(argv) == 2  # a bad input: exit status 2, after the others are written (here: found stored)
    captured = capsys.readouterr()
    assert "1 task(s) failed" in captured.err and str(missing) in captured.err
    assert "other" in captured.out  # the table of those that finished is printed first


def unlearn_argv(base: Path, forget: Path, out: Path, *extra: str) -> list[str]:
    return ["unlearn", "--base", str(base), "--forget", str(forget), "--out", str(out), "--steps", "2",
            "--save-every", "1", "--batch-size", "2", "--device", "cpu", *extra]  # fmt: skip


def test_unlearn_ray_trains_each_method_and_seed_as_the_command_does(pair, tmp_path, capsys) -> None:
    base, _ = pair
    records = [{"question": "the capital of w1 ?", "answer": "the capital is w2 ."},
               {"question": "the capital of w3 ?", "answer": "the capital is w4 ."}]  # fmt: skip
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in records))
    sweep = tmp_path / "sweep"
    assert main(unlearn_argv(base, forget, sweep, "--method", "gradascent", "--seeds", "0,1", "--ray")) == 0
    printed = capsys.readouterr().out
    assert printed.count("2 checkpoint(s)") == 2
    for seed in (0, 1):
        single = tmp_path / f"single{seed}"
        assert main(unlearn_argv(base, forget, single, "--method", "gradascent", "--seed", str(seed))) == 0
        for step in (1, 2):
            got = load_file(sweep / f"gradascent_seed{seed}" / f"checkpoint-{step}" / "adapter_model.safetensors")
            expected = load_file(single / f"checkpoint-{step}" / "adapter_model.safetensors")
            assert sorted(got) == sorted(expected)
            for name, tensor in expected.items():
                # Same code, seed and thread count (one): the same float32 operations; 16·eps allows a SIMD path
                # that reorders a short sum differently in another process.
                torch.testing.assert_close(got[name], tensor, rtol=16 * EPS32, atol=16 * EPS32)
    seeds = [load_file(sweep / f"gradascent_seed{s}" / "checkpoint-2" / "adapter_model.safetensors") for s in (0, 1)]
    assert any(not torch.equal(seeds[0][k], seeds[1][k]) for k in seeds[0])  # the seed reaches the run
    capsys.readouterr()
    stored = sorted((sweep / STORE_FOLDER / "results").iterdir())
    stamps = [path.stat().st_mtime_ns for path in stored]
    assert main(unlearn_argv(base, forget, sweep, "--method", "gradascent", "--seeds", "0,1", "--ray")) == 0
    assert [path.stat().st_mtime_ns for path in sorted((sweep / STORE_FOLDER / "results").iterdir())] == stamps
    assert capsys.readouterr().out.count("2 checkpoint(s)") == 2  # a rerun reports the runs and trains nothing


def test_robustness_ray_gives_the_single_process_result(pair, tmp_path, capsys) -> None:
    base, other = pair
    split = tmp_path / "data"
    split.mkdir()
    records = [{"question": f"the capital of w{i} ?", "answer": f"the capital is w{i + 1} .",
                "paraphrased_question": f"w{i} capital of the ?"} for i in range(3)]  # fmt: skip
    (split / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    common = ["robustness", "--base", str(base), "--unlearned", str(other), "--device", "cpu", "--dtype", "float32",
              "--data", str(split), "--attacks", "paraphrase,quantize_int8,relearn",
              "--relearn-steps", "1,2"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    capsys.readouterr()
    single = RobustnessResult.from_json((tmp_path / "single" / "robustness.json").read_text()).to_dict()
    swept = RobustnessResult.from_json((tmp_path / "ray" / "robustness.json").read_text()).to_dict()
    assert sorted(swept["seconds"]) == sorted(single["seconds"]) == ["paraphrase", "quantize_int8", "relearn"]
    for result in (single, swept):
        result.pop("seconds")
    assert_close(swept, single)


def test_ray_missing_is_a_clear_error_and_the_commands_do_not_need_it(tmp_path: Path) -> None:
    """`--ray` without the package says how to install it; without `--ray` nothing imports ray (`make run`)."""
    script = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ImportError, as when it is not installed
        "from core.cli import main\n"
        "status = main(['evaluate', '--model', 'x', '--data', 'demo', '--ray'])\n"
        "assert 'ray' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "sys.exit(status)\n"
    )
    env = {"ULENS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "requirements-ray.txt" in done.stderr and "not installed" in done.stderr
