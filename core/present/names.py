"""Names a person reads: every stored metric key (forget_Q_A_Prob, mia_min_k/auc, mmlu/acc, …) as a display name
with its unit and better direction ("Forget-set answer probability (0–1, lower = more forgotten)"), numbers at a
precision that suits the metric, and local paths cut to what a reader of a mailed document may see.

The names are built from the parts of a key: the split prefix (forget_, retain_, ra_, wf_, holdout_), the
per-split measurement (Q_A_Prob, Truth_Ratio, …), MIA attacks (mia_<attack>[/auc|/forget|/holdout]) and benchmark
tasks (<task>/acc). Directions come from core.evaluation.metrics.describe, the one place that knows them. A key
no rule knows falls back to a readable form of itself (underscores to spaces), so a metric added later never shows
a blank; `metric_name(key).known` says whether a rule named it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.evaluation import metrics

# registered metric (core.evaluation.metrics.METRICS) → (what it measures, unit, how it is computed)
REGISTERED: dict[str, tuple[str, str, str]] = {
    "average_loss": ("average answer loss", "nats", "negative log-likelihood per answer token (the LOSS attack)"),
    "probability": ("answer probability", "0–1", "geometric mean of the answer tokens' probabilities"),
    "normalised_probability": ("normalised answer probability", "0–1", "true answer against the wrong ones"),
    "truth_ratio": ("truth ratio", "ratio", "wrong-answer over true-answer probability, per item"),
    "truth_ratio_forget": ("truth ratio", "0–1", "mean of min(TR, 1/TR): 1 = true and wrong answers equally likely"),
    "truth_ratio_retain": ("truth-ratio score", "0–1", "mean of max(0, 1 − TR): high = the true answer preferred"),
    "rouge_l_recall": ("ROUGE-L recall", "0–1", "overlap of the greedy generation with the answer"),
    "rouge_l_f1": ("ROUGE-L F1", "0–1", "overlap of the greedy generation with the answer"),
    "exact_memorisation": ("exact memorisation", "0–1", "share of answer tokens the model predicts exactly"),
    "extraction_strength": ("extraction strength", "0–1", "1 − shortest prefix after which the rest is predicted"),
    "extraction_strength_textbook": (
        "extraction strength (textbook form)",
        "0–1",
        "as extraction strength, 0 when no suffix is predicted",
    ),
    "truth_ratio_prob_mean": (
        "true-answer share",
        "0–1",
        "mean of p_true / (p_true + p_wrong) (truth ratio, prob_mean)",
    ),
    "zlib_score": ("zlib membership score", "score", "answer loss over the answer's zlib-compressed length"),
    "min_k_score": ("Min-K% membership score", "score", "mean of the lowest 40 % token log-probabilities, negated"),
    "min_k_plus_plus_score": ("Min-K%++ membership score", "score", "Min-K% on normalised token log-probabilities"),
    "mia_auc": ("membership-inference AUC", "0–1", "how well a score tells forget items from never-seen holdout ones"),
    "privleak": ("privacy leakage", "%", "PrivLeak: relative MIA AUC gap to the oracle; negative = under-unlearned"),
    "forget_quality": (
        "forget quality",
        "p-value",
        "KS-test p-value of the forget-set truth ratios against the oracle's",
    ),
    "model_utility": ("model utility", "0–1", "harmonic mean of the retain-set and world-knowledge scores"),
    "mcq_accuracy": ("multiple-choice accuracy", "0–1", "the true answer ranked first among the choices"),
}

SPLIT_WORDS = {
    "forget": "Forget-set",
    "retain": "Retain-set",
    "real_authors": "Real-authors",
    "world_facts": "World-facts",
    "holdout": "Holdout-set",
}

# per-split measurement (the key after its split prefix) → the registered metric it reports, or its own words
_SUFFIXES: tuple[tuple[str, str | tuple[str, str, str]], ...] = (
    (r"^Q_A_Prob_normalised$", "normalised_probability"),
    (r"^Q_A_PARA_Prob$", ("paraphrased-answer probability", "0–1", "the answer reworded, same meaning")),
    (r"^Q_A_PERT_Prob$", ("wrong-answer probability", "0–1", "mean over the perturbed (wrong) answers")),
    (r"^Q_A_Prob$", "probability"),
    (r"^(Truth_Ratio|truth_ratio)$", ("truth ratio", "0–1", "true against wrong answers (TOFU)")),
    (r"^(Truth_Ratio|truth_ratio)_prob_mean$", "truth_ratio_prob_mean"),
    (r"^Q_A_ROUGE$", "rouge_l_recall"),
    (r"^knowmem_ROUGE$", ("knowledge-memorisation ROUGE-L", "0–1", "MUSE: answers to questions on the text")),
    (r"^verbmem_ROUGE$", ("verbatim-memorisation ROUGE-L", "0–1", "MUSE: continuation of the text itself")),
    (r"^exact_memorization$", "exact_memorisation"),
    (r"^extraction_strength$", "extraction_strength"),
    (r"^extraction_strength_textbook$", "extraction_strength_textbook"),
)
_WHOLE = {  # keys that are a registered metric on their own
    "forget_quality": "forget_quality",
    "model_utility": "model_utility",
    "privleak": "privleak",
    "exact_memorization": "exact_memorisation",
    "extraction_strength": "extraction_strength",
    "extraction_strength_textbook": "extraction_strength_textbook",
}
_FORGET_SET_WHOLE = ("exact_memorization", "extraction_strength", "extraction_strength_textbook")
PARTIAL_UTILITY = ("partial model utility", "0–1", "harmonic mean of the model-utility components present only")
MIA_WORDS = {"mia_loss": "LOSS", "mia_zlib": "ZLib", "mia_min_k": "Min-K%", "mia_min_k_plus_plus": "Min-K%++",
             "mia_gradnorm": "gradient-norm"}  # fmt: skip
TASK_WORDS = {"mmlu": "MMLU", "wmdp": "WMDP", "world_facts": "World-facts", "hellaswag": "HellaSwag"}
_TASK_FIELDS = {
    "acc": ("accuracy", "0–1", "share of questions answered correctly"),
    "acc_norm": ("length-normalised accuracy", "0–1", "choices scored per token"),
    "acc_stderr": ("accuracy, standard error", "0–1", "of the accuracy over the questions"),
    "acc_norm_stderr": ("length-normalised accuracy, standard error", "0–1", "of the accuracy over the questions"),
}
_MIA_FIELDS = {"forget": "mean score on the forget set", "holdout": "mean score on the holdout set"}


@dataclass(frozen=True)
class MetricName:
    """A stored metric key as a person reads it: `name`, `unit` and better `direction` (each but the name may be
    empty), and `about`, how it is computed (for a footnote or a hover)."""

    key: str
    name: str
    unit: str
    direction: str
    about: str
    known: bool

    @property
    def label(self) -> str:
        """The name with unit and direction: "Forget-set answer probability (0–1, lower = more forgotten)"."""
        extra = ", ".join(part for part in (self.unit, self.direction) if part)
        return f"{self.name} ({extra})" if extra else self.name


Named = tuple[str, str, str]  # (name, unit, about)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def readable(key: str) -> str:
    """A key no rule knows, made readable: split prefix spelled out, underscores and slashes to spaces."""
    head, *rest = key.split("/")
    prefix, _, tail = head.partition("_")
    split = metrics.SPLIT_BY_PREFIX.get(prefix)
    words = f"{SPLIT_WORDS[split]} {tail}" if split in SPLIT_WORDS and tail else head
    words = " ".join([words, *rest]).replace("_", " ")
    return _capital(re.sub(r"\s+", " ", words).strip()) or key


def _task_name(task: str) -> str:
    head, _, sub = task.partition("_")
    if task in TASK_WORDS:
        return TASK_WORDS[task]
    return f"{TASK_WORDS[head]} {sub.replace('_', ' ')}" if head in TASK_WORDS and sub else task.replace("_", " ")


def _mia_name(head: str, field: str) -> Named | None:
    attack = MIA_WORDS.get(head, head.removeprefix("mia_").replace("_", " "))
    if field in ("", "auc"):
        _, unit, about = REGISTERED["mia_auc"]
        return f"Membership-inference AUC, {attack} attack", unit, about
    if field in _MIA_FIELDS:
        return f"{attack} membership score, {_MIA_FIELDS[field]}", "score", "the attack's score per item, averaged"
    return None


def _split_name(head: str) -> Named | None:
    prefix, _, tail = head.partition("_")
    split = metrics.SPLIT_BY_PREFIX.get(prefix)
    if split not in SPLIT_WORDS:
        return None
    for pattern, named in _SUFFIXES:
        if re.search(pattern, tail):
            what, unit, about = REGISTERED[named] if isinstance(named, str) else named
            return f"{SPLIT_WORDS[split]} {what}", unit, about
    return None


def _named(key: str) -> Named | None:
    """The rules, in order: whole keys, MIA attacks, per-split measurements, benchmark tasks."""
    head, _, field = key.partition("/")
    if not field and head == getattr(metrics, "PARTIAL_MODEL_UTILITY", "model_utility_partial"):
        what, unit, about = PARTIAL_UTILITY
        return _capital(what), unit, about
    if not field and head in _WHOLE:
        what, unit, about = REGISTERED[_WHOLE[head]]
        forget_set = head in _FORGET_SET_WHOLE  # open-unlearning's forget-set names carry no prefix
        return (f"Forget-set {what}" if forget_set else _capital(what)), unit, about
    if head.startswith("mia_"):
        return _mia_name(head, field)
    if not field:
        return _split_name(head)
    if field in _TASK_FIELDS:
        what, unit, about = _TASK_FIELDS[field]
        return f"{_task_name(head)} {what}", unit, about
    return None


def direction(key: str) -> str:
    """Which way is better, in words; forget-set metrics say "more forgotten" rather than "better"."""
    info = metrics.describe(key)
    forgetting = metrics.is_forgetting_split(info.split)
    if key == "forget_quality":
        return "higher = closer to the oracle"
    if info.higher_is_better is not None:
        word = (
            "more forgotten" if forgetting and info.metric is not None and info.metric.kind != "utility" else "better"
        )
        return f"{'higher' if info.higher_is_better else 'lower'} = {word}"
    if info.ideal is not None:
        meaning = {"privleak": "like the oracle", "mia_auc": "forget set unrecognisable"}
        return f"closer to {info.ideal:g} = {meaning.get(info.metric.name, 'better') if info.metric else 'better'}"
    return ""


def metric_name(key: str) -> MetricName:
    """The display name of a stored metric key; an unknown key gets a readable form of itself (known=False)."""
    found = _named(key)
    name, unit, about = found if found else (readable(key), "", "")
    return MetricName(key, name, unit, direction(key), about, found is not None)


def metric_label(key: str) -> str:
    return metric_name(key).label


# ---------------------------------------------------------------------------------------------- numbers


def format_value(key: str, value: Any) -> str:
    """A metric value at the precision its unit suits: % to 0.1, p-values to 3 significant digits, 0–1 scores to
    3 decimals, anything else to 4 significant digits; missing values as an em dash."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "—"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "—"
    unit = metric_name(key).unit
    if unit == "%":
        return f"{number:.1f}"
    if unit == "p-value":
        return f"{number:.3g}"
    if unit == "0–1":
        return f"{number:.3f}"
    return f"{number:.4g}"


# ---------------------------------------------------------------------------------------------- paths

_SEGMENT = r"[^\s'\"<>|,;()\[\]{}/\\]+"
# two or more components after a root (/, ~/, C:\): "/a/b" is a path, "</script>" and "1/2" are not
_ABSOLUTE = re.compile(rf"(?<![\w.~/\\:-])(?:~|[A-Za-z]:)?[/\\]{_SEGMENT}(?:[/\\]{_SEGMENT})+[/\\]?")


def public_path(path: str | os.PathLike[str]) -> str:
    """A local path as a mailed document may show it: its last component only (the folder or file name)."""
    text = str(path).rstrip("/\\")
    name = Path(text).name or text
    return name.split("\\")[-1] or name


def scrub_paths(text: str) -> str:
    """`text` with every absolute local path cut to its last component (no home, cache or checkout folders)."""

    def short(match: re.Match[str]) -> str:
        found = match.group(0)
        trailing = re.search(r"[:.]+$", found)  # "…/evals: message" and "…/file." keep their punctuation
        core = found[: trailing.start()] if trailing else found
        return public_path(core) + (trailing.group(0) if trailing else "")

    return _ABSOLUTE.sub(short, text)
