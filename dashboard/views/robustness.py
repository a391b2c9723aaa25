"""Robustness: run attacks that try to bring the forgotten answers back, and see how much each recovers."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.attacks.base import ATTACKS, RobustnessSettings, available_attacks
from core.attacks.runner import RobustnessResult, load_robustness_data, run_attacks
from core.data.qa import SplitData
from core.present import numbers
from core.present.figures.robustness import recovery_figure, relearning_figure
from dashboard.boundary import report_errors
from dashboard.exports import chart
from dashboard.options import option_input
from dashboard.plain import plain
from dashboard.sources import typed_path
from dashboard.state.focus import request_scroll, results_header
from dashboard.state.pair import chat_default, pair_key, pair_or_progress, shared_model_job
from dashboard.state.sidebar import sidebar
from dashboard.state.template import page_template

SOURCES = ("Demo set", "Folder")
DEFAULT_ITEMS = 6
RESULTS_ANCHOR = "robustness-results"
MAX_STEPS_CHARS = 200  # the relearning steps box; core.attacks.base refuses steps beyond core.common.limits' bounds
EXPANDERS = {"relearn": "Relearning attack"}
MEANWHILE = "Meanwhile: choose the attacks and their settings above; they run once the models are ready."
# Widget keys other than robustness_<option>: kept from before the options were declared (links and tests use them).
OPTION_KEYS = {
    "relearn_items": "robustness_k",
    "relearn_steps": "robustness_steps",
    "relearn_lr": "robustness_lr",
    "lora_rank": "robustness_rank",
}


@st.cache_data(show_spinner=False, max_entries=4)
def robustness_data(source: str, mtime_ns: int) -> SplitData:
    """The demo splits or a split folder, read once per (source, modification time)."""
    return load_robustness_data(source)


def choose_data() -> tuple[str, SplitData] | None:
    source = st.radio("Forget set", SOURCES, horizontal=True, key="robustness_source")
    with report_errors():
        if source == "Demo set":
            return "demo", robustness_data("demo", 0)
        typed = typed_path(
            "Split folder", "robustness_folder", "…/folder with forget.jsonl",
            "Type a folder holding forget.jsonl (and retain.jsonl for the in-context control).",
        )  # fmt: skip
        return None if typed is None else (typed[0], robustness_data(*typed))
    return None


def choose_settings(data: SplitData) -> tuple[list[str], RobustnessSettings] | None:
    """Attacks and options; None (with a message) when an option is invalid."""
    runnable = available_attacks()
    attacks = st.multiselect(
        "Attacks",
        list(ATTACKS),
        default=runnable,
        key="robustness_attacks",
        help="\n".join(
            f"- **{name}**: {attack.description}" + ("" if name in runnable else f" ({attack.unavailable()})")
            for name, attack in ATTACKS.items()
        ),
    )
    count = len(data.forget)
    cols = st.columns(4)
    items = cols[0].number_input("Forget items", 1, count, min(count, DEFAULT_ITEMS), key="robustness_items")
    chat = cols[1].toggle("Chat template", value=chat_default(), key="robustness_chat")
    attack_base = cols[2].toggle("Attack the base too", value=True, key="robustness_attack_base")
    batch_size = cols[3].number_input("Batch size", 1, 64, 8, key="robustness_batch")
    chosen = attack_options(count)
    with report_errors():
        settings = RobustnessSettings(
            chat=page_template(chat),
            batch_size=int(batch_size),
            max_items=int(items),
            attack_base=attack_base,
            **chosen,
        )
        return attacks, settings
    return None


def attack_options(count: int) -> dict[str, Any]:
    """Each attack's declared options in an expander of its own; their values by option name."""
    trained = max(1, count - 1)  # relearning keeps at least one item out to evaluate on
    overrides = {
        "relearn_items": {"max_value": trained, "value": min(2, trained)},
        "relearn_steps": {"max_chars": MAX_STEPS_CHARS},
        "relearn_lr": {"format": "%.0e"},
    }
    values: dict[str, Any] = {}
    for name, attack in ATTACKS.items():
        if not attack.option_specs:
            continue
        with st.expander(EXPANDERS.get(name, f"{name.replace('_', ' ').capitalize()} attack")):
            cols = st.columns(len(attack.option_specs))
            for column, spec in zip(cols, attack.option_specs, strict=True):
                key = OPTION_KEYS.get(spec.name, f"robustness_{spec.name}")
                values[spec.name] = option_input(column, spec, key, **overrides.get(spec.name, {}))
    return values


def run_panel(source: str, data: SplitData, attacks: list[str], settings: RobustnessSettings) -> None:
    above = st.container()
    pair = pair_or_progress(MEANWHILE)  # the load's progress, under the button, while the pair loads
    if not above.button("Run attacks", type="primary", disabled=pair is None or not attacks) or pair is None:
        return
    with st.status(f"Running {len(attacks)} attack(s) on {settings.max_items} forget items…", expanded=True) as status:
        bar = st.progress(0.0)
        result = None
        with report_errors(), shared_model_job("robustness attacks"):
            result = run_attacks(
                pair,
                data,
                attacks,
                settings,
                progress=lambda done, message: bar.progress(min(1.0, done), text=plain(message)),
            )
        if result is None:
            status.update(label="The attacks failed", state="error")
            return
        st.session_state["robustness_result"] = ((pair_key(), source), result)
        status.update(label=f"Ran {len(attacks)} attack(s)", state="complete", expanded=False)
        request_scroll(RESULTS_ANCHOR)


def table_columns(frame) -> dict:
    """Probabilities in the readable format (scientific below 1e-3), recovery in percent."""
    columns = {
        name: st.column_config.NumberColumn(format=numbers.TABLE_PROBABILITY)
        for name in frame.columns
        if name.startswith(("attacked_", "reference_", "prob")) or name in ("base_shift",)
    }
    if "recovery_pct" in frame.columns:
        columns["recovery_pct"] = st.column_config.NumberColumn(format="%.1f %%")
    return columns


def results_panel(result: RobustnessResult) -> None:
    results_header("Recovery", RESULTS_ANCHOR)
    cols = st.columns(3)
    cols[0].metric("Forget items", result.n_items)
    cols[1].metric("Forget probability, base", numbers.probability(result.base))
    cols[2].metric("Forget probability, unlearned", numbers.probability(result.unlearned))
    if result.note:
        st.info(
            f"No recovery to measure: {plain(result.note)}. The table still shows what each attack does to both "
            "models' forget probability."
        )
    recovery = recovery_figure(result)
    chart(recovery, "robustness recovery", key="robustness_recovery")
    if result.relearning():
        curve = relearning_figure(result)
        chart(curve, "relearning curve", key="robustness_relearning")
    frame = result.to_frame()
    st.dataframe(frame, hide_index=True, key="robustness_table", column_config=table_columns(frame))
    st.download_button(
        "Download CSV", frame.to_csv(index=False), file_name="robustness.csv", mime="text/csv", key="robustness_csv"
    )
    st.download_button(
        "Download JSON", result.to_json(), file_name="robustness.json", mime="application/json", key="robustness_json"
    )


sidebar()
st.title("Robustness")
st.caption(
    "Recovery % = (attacked − unlearned) / (base − unlearned) × 100 of the forget-answer probability, on the same "
    "items: 0 % = the attack brings nothing back, 100 % = as much as the base knows."
)
chosen = choose_data()
if chosen is None:
    st.stop()
source, data = chosen
picked = choose_settings(data)
if picked is None:
    st.stop()
run_panel(source, data, *picked)
stored = st.session_state.get("robustness_result")
if stored and stored[0] == (pair_key(), source):
    results_panel(stored[1])
