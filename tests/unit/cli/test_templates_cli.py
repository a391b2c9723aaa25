"""--template on probe, evaluate, robustness and unlearn: one default per model everywhere (the demo's plain format
for the demo pair), the legacy flags as aliases, and the probe's end-of-turn/EOS rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from cli_args import pair_args
from tiny_models import save_tiny_model_dir

from core.cli.common import template_from_args
from core.common.errors import UserError


def parse(command: str, *argv: str) -> argparse.Namespace:
    module = __import__(f"core.cli.{command}", fromlist=["add_parser"])
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args([command, *argv])


def test_the_demo_pair_defaults_to_plain_on_every_command() -> None:
    robustness = parse("robustness", "--data", "demo", "--out", "x")
    from core.cli.robustness import _settings

    assert _settings(robustness).chat == "plain"  # the demo models never saw the chat template
    assert template_from_args(parse("probe", "--prompt", "p")) == "plain"
    assert template_from_args(parse("unlearn", "--method", "npo", "--base", "demo:base")) == "plain"


def test_explicit_templates_and_aliases() -> None:
    assert template_from_args(parse("evaluate", "--data", "demo", "--template", "phi-1.5")) == "phi-1.5"
    assert template_from_args(parse("evaluate", "--data", "demo", "--no-chat"), ["some/model"]) == "plain"
    assert template_from_args(parse("probe", "--prompt", "p", "--chat"), ["demo:base"]) == "chat"
    with pytest.raises(UserError, match="unknown template"):
        template_from_args(parse("robustness", "--template", "nope"))


def test_probe_shows_the_end_rows_as_scored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = save_tiny_model_dir(tmp_path / "base", seed=0)
    unlearned = save_tiny_model_dir(tmp_path / "unlearned", seed=1)
    argv = [*pair_args(base, unlearned, "the capital of france", "paris"), "--template", "chat"]
    args = parse("probe", *argv, "--score-end", "--json")
    assert args.handler(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chat"] == "chat" and result["end_tokens"] == 1  # this template has no end-of-turn: the EOS
    assert [token["token"] for token in result["tokens"]] == ["paris", "</s>"]
    args = parse("probe", *argv, "--score-end")
    assert args.handler(args) == 0
    table = capsys.readouterr().out
    assert "template: chat" in table and "end (scored)" in table
    args = parse("probe", *argv, "--json")
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["end_tokens"] == 0
