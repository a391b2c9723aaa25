"""The generic Registry and typed options: every name → entry table of the project is one, options are checked, the
dashboard draws its controls from them, and the demo's evaluations are there whatever was imported first."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from tiny_models import save_tiny_model_dir

from core.analyses.attribution import run as attribution
from core.attacks import base as robustness
from core.common import Option, Registry, option, options_of
from core.common.errors import UserError
from core.evaluation import evaluate, metrics
from core.unlearn import UNLEARNING_METHODS, demo
from dashboard.state import keys

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "dashboard" / "app.py"
# the attribution page's keys that are not attribution_<option> (importing the page would run it)
OPTION_KEYS = {"n_steps": "attribution_steps", "method": "attribution_ig_rule"}
ALL_REGISTRIES = {
    "ATTRIBUTION_METHODS": attribution.ATTRIBUTION_METHODS,
    "UNLEARNING_METHODS": UNLEARNING_METHODS,
    "ATTACKS": robustness.ATTACKS,
    "METRICS": metrics.METRICS,
    "SPLIT_METRICS": evaluate.SPLIT_METRICS,
    "MIA_ATTACKS": evaluate.MIA_ATTACKS,
    "DEMO_EVALUATIONS": demo.DEMO_EVALUATIONS,
}


# ---------------------------------------------------------------------------------------------- Registry


def test_register_get_and_order() -> None:
    registry: Registry[object] = Registry("widget")

    @registry.register
    class Named:
        name = "named"

    @registry.register(name="renamed")
    def plain() -> None: ...

    @registry.register
    def by_function_name() -> None: ...

    assert registry.names() == ["named", "renamed", "by_function_name"] == list(registry)
    assert registry.get("named") is Named and registry["renamed"] is plain
    assert "named" in registry and "nope" not in registry and [] not in registry and len(registry) == 3
    assert registry.items()[-1] == ("by_function_name", by_function_name)


def test_unknown_name_is_a_user_error_naming_the_known_ones() -> None:
    registry: Registry[int] = Registry("gadget")
    registry.register(1, name="one")
    registry.register(2, name="two")
    with pytest.raises(UserError, match=r"unknown gadget 'three'; registered: one, two"):
        registry.get("three")
    with pytest.raises(UserError, match="unknown gadget"):
        registry.get(["unhashable"])  # type: ignore[arg-type]


def test_a_name_registered_twice_is_an_error() -> None:
    registry: Registry[int] = Registry("gadget")
    registry.register(1, name="one")
    with pytest.raises(ValueError, match="'one' is registered twice"):
        registry.register(2, name="one")
    assert registry.get("one") == 1


def test_instantiate_stores_an_instance_and_returns_the_class() -> None:
    registry: Registry[object] = Registry("thing", instantiate=True)

    @registry.register
    class Thing:
        name = "thing"

    assert isinstance(registry.get("thing"), Thing)


def test_describe_lists_every_entry_and_its_options() -> None:
    registry: Registry[object] = Registry("thing")

    class WithOptions:
        name = "with"
        description = "takes two"
        option_specs = (Option("steps", int, 4, "how many", min=1, max=9), Option("mode", str, "a", choices=("a", "b")))

    registry.register(WithOptions)
    registry.register(lambda: None, name="without")
    rows = registry.describe()
    assert [(r["name"], r["option"], r["type"], r["default"], r["range"]) for r in rows] == [
        ("with", "steps", "int", 4, "1..9"),
        ("with", "mode", "str", "a", "a | b"),
        ("without", "", "", "", ""),
    ]
    assert rows[0]["description"] == "takes two" and rows[0]["help"] == "how many"


# ---------------------------------------------------------------------------------------------- options


def test_options_validate_type_range_and_choices() -> None:
    steps = Option("steps", int, 4, min=1, max=9)
    assert steps.validate(9) == 9
    for bad in (0, 10, 2.5, True, "3"):
        with pytest.raises(UserError, match="steps"):
            steps.validate(bad)
    rate = Option("rate", float, 0.1, min=0.0)
    assert rate.validate(1) == 1.0 and isinstance(rate.validate(1), float)
    with pytest.raises(UserError, match="at least 0"):
        rate.validate(-0.5)
    with pytest.raises(UserError, match="at least 0"):
        rate.validate(float("nan"))
    with pytest.raises(UserError, match="must be one of a, b, not 'c'"):
        Option("mode", str, "a", choices=("a", "b")).validate("c", owner="tool")
    with pytest.raises(TypeError):
        Option("shape", tuple, ())


def test_options_of_reads_dataclass_fields_with_option_metadata() -> None:
    @dataclasses.dataclass
    class Settings:
        steps: int = option(4, "how many", min=1, max=9, label="Steps")
        internal: int = 0  # no option metadata: not an option

    (steps,) = options_of(Settings)
    assert steps == Option("steps", int, 4, "how many", min=1, max=9, label="Steps")
    assert [o.name for o in options_of(Settings, "internal")] == ["internal"]
    with pytest.raises(ValueError, match="no field"):
        options_of(Settings, "missing")


def test_declared_options_refuse_out_of_range_values_in_the_library() -> None:
    with pytest.raises(UserError, match="window must be at least 1"):
        attribution._check_request("occlusion", attribution.AttributionSettings(window=0), "Q?", "A.")
    with pytest.raises(UserError, match="method must be one of"):
        attribution._check_request("integrated_gradients", attribution.AttributionSettings(method="simpson"), "Q", "A")
    with pytest.raises(UserError, match="retain_loss must be one of nll, kl"):
        UNLEARNING_METHODS.get("graddiff").from_options({"retain_loss": "mse"})
    with pytest.raises(UserError, match="layer must be a int"):
        UNLEARNING_METHODS.get("rmu").from_options({"layer": "seven"})


# ---------------------------------------------------------------------------------------------- the project's


@pytest.mark.parametrize("name", sorted(ALL_REGISTRIES))
def test_every_registry_is_a_non_empty_registry(name: str) -> None:
    registry = ALL_REGISTRIES[name]
    assert isinstance(registry, Registry) and len(registry) > 0
    for entry in registry.values():
        for spec in getattr(entry, "option_specs", ()):
            assert isinstance(spec, Option) and spec.validate(spec.default) == spec.default


def test_declared_options_match_the_settings_they_set() -> None:
    """Attribution options are AttributionSettings fields, the relearning attack's RobustnessSettings fields."""
    assert tuple(attribution.BASELINES) == attribution.SETTINGS_OPTIONS["baseline"].choices
    settings = {f.name for f in dataclasses.fields(attribution.AttributionSettings)}
    assert all(s.name in settings for m in attribution.ATTRIBUTION_METHODS.values() for s in m.option_specs)
    relearn = robustness.ATTACKS.get("relearn").option_specs
    defaults = {spec.name: spec.default for spec in relearn}
    assert robustness.RobustnessSettings(**defaults) == robustness.RobustnessSettings()


def test_demo_evaluations_are_registered_in_a_fresh_interpreter() -> None:
    """Importing core.unlearn.demo alone (not core.evaluation.evaluate, which registers them) still finds the demo
    evaluations."""
    code = (
        "import sys, core.unlearn.demo as d; assert 'core.evaluation.evaluate' not in sys.modules; "
        "print(d.DEMO_EVALUATIONS.names())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "tofu" in out.stdout


def test_building_with_nothing_to_evaluate_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo, "DEMO_EVALUATIONS", Registry("demo evaluation"))
    with pytest.raises(RuntimeError, match="no demo evaluation is registered"):
        demo.DemoExperiment(root=tmp_path).build()


# ---------------------------------------------------------------------------------------------- dashboard


@pytest.fixture
def attribution_page(fresh_app: None, tmp_path: Path) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state[keys.AUTOLOAD] = False
    at.run()
    base, unlearned = save_tiny_model_dir(tmp_path / "base", seed=0), save_tiny_model_dir(tmp_path / "un", seed=1)
    next(t for t in at.text_input if t.label == "Base model").input(str(base))
    next(t for t in at.text_input if t.label == "Unlearned model").input(str(unlearned))
    next(b for b in at.button if b.label == "Load pair").click().run()
    at.switch_page("views/attribution.py").run()
    assert not at.exception
    return at


def option_key(spec: Option) -> str:
    return OPTION_KEYS.get(spec.name, f"attribution_{spec.name}")


def test_attribution_controls_are_the_chosen_methods_options(attribution_page: AppTest) -> None:
    at = attribution_page
    every_key = {option_key(s) for m in attribution.ATTRIBUTION_METHODS.values() for s in m.option_specs}
    for name in attribution.ATTRIBUTION_METHODS:
        at.selectbox(key="attribution_method").set_value(name).run()
        assert not at.exception
        widgets = [*at.selectbox, *at.number_input, *at.checkbox, *at.text_input]
        drawn = {w.key: w for w in widgets if w.key in every_key}
        specs = attribution.ATTRIBUTION_METHODS.options(name)
        # the baseline is drawn for every method: the faithfulness curves of 'Compare every method' need it
        assert set(drawn) == {option_key(s) for s in specs} | {"attribution_baseline"}, name
        for spec in specs:
            widget = drawn[option_key(spec)]
            assert widget.label == spec.title and widget.value == spec.default
            if spec.type is int:
                assert (widget.min, widget.max) == (spec.min, spec.max if spec.max is not None else widget.max)
            if spec.choices:
                assert tuple(widget.options) == spec.choices
