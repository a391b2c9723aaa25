"""The command line's shape: argparse lives only in core/cli/, and every command's --help runs."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from core.analyses.attribution import AttributionSettings
from core.attacks.base import ATTACKS
from core.cli import build_parser
from core.common import options_of

CORE = Path(__file__).resolve().parents[3] / "core"
CLI = CORE / "cli"


def imports_argparse(path: Path) -> bool:
    """Whether the module imports argparse anywhere (top level, inside a function, or `from argparse import …`)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "argparse" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_argparse_is_imported_only_by_the_cli_package() -> None:
    outside = [path for path in CORE.rglob("*.py") if CLI not in path.parents]
    assert outside and imports_argparse(CLI / "__init__.py")  # the check finds modules, and finds argparse
    offenders = [str(path.relative_to(CORE.parent)) for path in outside if imports_argparse(path)]
    assert offenders == []


def command_names() -> list[str]:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return list(commands.choices)


def test_every_command_is_registered() -> None:
    expected = ["model", "demo", "probe", "unlearn", "evaluate", "attribute", "lens", "ingest", "report", "robustness"]
    assert command_names() == expected


@pytest.mark.parametrize("argv", [[], *([name] for name in command_names())], ids=lambda argv: " ".join(argv) or "top")
def test_help_runs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args([*argv, "--help"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m core {' '.join(argv)}".rstrip())


def command_flags(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {flag: action for action in subparsers.choices[command]._actions for flag in action.option_strings}


@pytest.mark.parametrize(
    ("command", "declared"),
    [
        ("attribute", lambda: options_of(AttributionSettings, "baseline", "n_steps", "n_samples", "window", "seed")),
        ("robustness", lambda: ATTACKS.options("relearn")),
    ],
)
def test_the_cli_offers_what_the_registry_declares(command: str, declared) -> None:
    """Each declared option is a flag with its default, choices and bounds (the dashboard draws the same ones)."""
    flags = command_flags(command)
    for spec in declared():
        action = flags["--" + spec.name.replace("_", "-")]
        assert action.default == spec.default and spec.help.split(";")[0] in (action.help or ""), spec.name
        if spec.choices:
            assert tuple(action.choices) == tuple(spec.choices)
        if spec.type is int and spec.max is not None:
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(str(int(spec.max) + 1))
            assert action.type(str(int(spec.max))) == spec.max
