"""Attacks register themselves: a module added to core/attacks/ is found without being named anywhere, every attack
module registers at least one attack, and the listing order does not depend on which module was imported first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core.attacks.base import ATTACKS, FIRST_ATTACK_MODULES, NOT_ATTACK_MODULES, attack_modules

ROOT = Path(__file__).resolve().parents[3]


def test_a_new_module_is_an_attack_module_and_helpers_and_private_ones_are_not(tmp_path: Path) -> None:
    for name in [*NOT_ATTACK_MODULES, *FIRST_ATTACK_MODULES, "zeta", "alpha", "_private", "__init__"]:
        (tmp_path / f"{name}.py").write_text("")
    expected = [*FIRST_ATTACK_MODULES, "alpha", "zeta"]
    assert attack_modules(tmp_path, "pkg") == tuple(f"pkg.{name}" for name in expected)


def test_every_attack_comes_from_an_attack_module_and_every_attack_module_registers_one() -> None:
    homes = {type(attack).__module__ for attack in ATTACKS.values()}
    assert homes == set(attack_modules())


def test_the_listing_order_does_not_depend_on_the_first_import() -> None:
    """A fresh interpreter that imports the last attack module first still lists the attacks in the usual order."""
    script = "import core.attacks.lens; from core.attacks.base import ATTACKS; print(','.join(ATTACKS))"
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip().split(",") == list(ATTACKS)
