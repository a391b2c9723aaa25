"""Templates: how a question and its answer become one token sequence, as open-unlearning's template configs say.

A template is one of three kinds, each kept as a data file in assets/templates/ (`list_templates()`):

- `chat`: the tokenizer's chat template, with an optional system prompt and date string (open-unlearning's
  `apply_chat_template: True`; its named configs for Llama-3.x-Instruct, Zephyr, Qwen2.5, Gemma, Phi-3.5);
- `tags`: literal `user_start_tag` + question + `user_end_tag` + `asst_start_tag` + answer (+ an optional
  `system_prompt_with_special_tokens` in front), tokenised as one text (open-unlearning's base-model configs: Phi-1.5,
  Llama-2, and the Llama-2-chat `[INST]` tags);
- `plain`: our demo format, the question, a space and the answer, the prompt and answer tokenised apart, nothing
  after the answer (the demo models are trained on exactly this).

`Template.sequence` builds what open-unlearning's `preprocess_chat_instance` builds (src/data/utils.py @ d3d7cf9):
the whole conversation tokenised, the prompt tokenised with its generation prompt, and an EOS appended when the
sequence does not end with one; every token after the prompt is scored (the answer, the template's end-of-turn
tokens, the EOS). The split between the answer and the end tokens is kept (`answer_stop`) so the probe can show the
end rows apart.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.common.errors import UserError
from core.common.paths import ASSETS

TEMPLATE_DIR = ASSETS / "templates"
KINDS = ("chat", "tags", "plain")
CHAT, PLAIN = "chat", "plain"
_TAGS = ("user_start_tag", "user_end_tag", "asst_start_tag", "asst_end_tag")
Examples = tuple[tuple[str, str], ...] | list[tuple[str, str]]  # in-context (question, answer) pairs


@dataclass(frozen=True)
class Template:
    """One template config (fields named as open-unlearning's `template_args`)."""

    name: str
    kind: str
    description: str = ""
    system_prompt: str | None = None
    date_string: str | None = None
    system_prompt_with_special_tokens: str | None = None
    user_start_tag: str = ""
    user_end_tag: str = ""
    asst_start_tag: str = ""
    asst_end_tag: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"template {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    @property
    def appends_eos(self) -> bool:
        """open-unlearning appends an EOS to every chat and tag sequence; the plain demo format ends at the answer."""
        return self.kind != PLAIN

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value not in (None, "") or key == "name"}

    # ------------------------------------------------------------------------------------------ token ids

    def _chat(
        self, prompt: str, answer: str | None, examples: Examples = ()
    ) -> tuple[list[dict[str, str]], dict[str, Any]]:
        chat = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for question, reply in examples:
            chat += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        chat.append({"role": "user", "content": prompt})
        if answer is not None:
            chat.append({"role": "assistant", "content": answer})
        return chat, ({"date_string": self.date_string} if self.date_string is not None else {})

    def _render(self, tokenizer: Any, prompt: str, answer: str | None, examples: Examples = ()) -> str:
        _require_chat_template(tokenizer, self.name)
        chat, extra = self._chat(prompt, answer, examples)
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=answer is None, **extra)

    def _chat_ids(self, tokenizer: Any, prompt: str, answer: str, prompt_ids: list[int]) -> list[int]:
        """The whole conversation's ids (`apply_chat_template(tokenize=True)` renders, then tokenises the text
        without adding special tokens, which is what this does). A template that drops the assistant's turn falls
        back to the prompt followed by the answer's tokens."""
        full = self._render(tokenizer, prompt, answer)
        if answer.strip() not in full:
            return prompt_ids + list(tokenizer(answer, add_special_tokens=False).input_ids)
        return _tokens(tokenizer, full)

    def _tag_prompt(self, prompt: str, examples: Examples = ()) -> str:
        shots = "".join(
            self.user_start_tag + question + self.user_end_tag + self.asst_start_tag + reply + self.asst_end_tag
            for question, reply in examples
        )
        return (
            (self.system_prompt_with_special_tokens or "")
            + shots
            + self.user_start_tag
            + prompt
            + self.user_end_tag
            + self.asst_start_tag
        )

    def prompt_ids(self, tokenizer: Any, prompt: str, examples: Examples = ()) -> list[int]:
        """The prompt as the model sees it before answering (the chat template's generation prompt included).

        `examples` are in-context (question, answer) pairs put before it, as open-unlearning's
        `preprocess_chat_instance` puts them for MUSE's KnowMem: earlier user/assistant turns of the chat, or
        earlier tag-wrapped exchanges (each closed by `asst_end_tag`); in the plain format, "question answer"
        followed by a blank line each (ours: the demo format has no turns)."""
        if self.kind == CHAT:
            return _tokens(tokenizer, self._render(tokenizer, prompt, None, examples))
        if self.kind == "tags":
            return list(tokenizer(self._tag_prompt(prompt, examples), add_special_tokens=True).input_ids)
        shots = "".join(f"{question} {reply}\n\n" for question, reply in examples)
        return list(tokenizer(shots + prompt).input_ids)

    def answer_ids(self, tokenizer: Any, prompt: str, answer: str) -> list[int]:
        """The answer's own tokens as they continue the prompt (a space in front in the plain format)."""
        if self.kind == PLAIN and not prompt[-1].isspace() and not answer[0].isspace():
            answer = " " + answer
        return list(tokenizer(answer, add_special_tokens=False).input_ids)

    def sequence(self, tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], int, int]:
        """(ids, prompt length, answer stop) as open-unlearning's `preprocess_chat_instance` builds them: tokens from
        the prompt length on are scored; those from `answer stop` on are the end-of-turn tokens and the EOS."""
        prompt_ids = self.prompt_ids(tokenizer, prompt)
        if self.kind == CHAT:
            ids = self._chat_ids(tokenizer, prompt, answer, prompt_ids)
        elif self.kind == "tags":
            ids = list(tokenizer(self._tag_prompt(prompt) + answer, add_special_tokens=True).input_ids)
        else:
            ids = prompt_ids + self.answer_ids(tokenizer, prompt, answer)
        eos = tokenizer.eos_token_id
        # tags: open-unlearning adds no end tag after the last answer, so the answer ends here (or at its own EOS)
        stop = len(ids) - (1 if eos is not None and ids and ids[-1] == eos else 0)
        if self.kind == CHAT:
            stop = _answer_stop(tokenizer, ids, len(prompt_ids), answer)
        if self.appends_eos and eos is not None and ids[-1] != eos:
            ids.append(eos)
        return ids, len(prompt_ids), stop


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _require_chat_template(tokenizer: Any, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"this tokenizer has no chat template, which template {name!r} needs; pick a tag template")


def _answer_stop(tokenizer: Any, ids: list[int], start: int, answer: str) -> int:
    """Where the answer's tokens end: the shortest prefix whose text holds the whole answer, read from a few tokens
    before the scored ones (a template may tokenise the answer's first word into the prompt's last token)."""
    target = answer.strip()
    plain = tokenizer(answer, add_special_tokens=False).input_ids
    if ids[start : start + len(plain)] == plain and target in tokenizer.decode(plain, skip_special_tokens=False):
        return start + len(plain)
    window = max(0, start - 8)
    for stop in range(start, len(ids) + 1):
        if target in tokenizer.decode(ids[window:stop], skip_special_tokens=False):
            return stop
    return len(ids)


# ---------------------------------------------------------------------------------------------- by name


def list_templates() -> list[str]:
    """The named templates shipped in assets/templates/."""
    return sorted(path.stem for path in TEMPLATE_DIR.glob("*.json"))


def template_from_dict(data: dict[str, Any], name: str) -> Template:
    known = set(Template.__dataclass_fields__)
    unknown = sorted(set(data) - known - {"apply_chat_template"})
    if unknown:
        raise UserError(f"template {name}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    fields = {key: value for key, value in data.items() if key in known}
    if "kind" not in fields:  # an open-unlearning template_args block
        fields["kind"] = CHAT if data.get("apply_chat_template") else "tags"
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"template {name}: field {key} must be text")
    return Template(**{"name": name, **fields})


def load_template(value: str | Path) -> Template:
    """A named template (`list_templates()`) or a JSON file with the same fields (open-unlearning's `template_args`
    keys are accepted: `apply_chat_template` picks chat or tags)."""
    text = str(value)
    if text in list_templates():
        return _named(text)
    path = Path(text)
    if not (path.suffix == ".json" and path.is_file()):
        raise UserError(f"unknown template {text!r}: use one of {', '.join(list_templates())} or a .json file")
    return _read(path)


@functools.lru_cache(maxsize=64)
def _named(name: str) -> Template:
    return _read(TEMPLATE_DIR / f"{name}.json")


def _read(path: Path) -> Template:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"template file {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"template file {path}: expected a JSON object")
    return template_from_dict(data, str(data.get("name") or path.stem))


def resolve_template(value: Template | str | Path | bool | None, tokenizer: Any = None) -> Template:
    """A template from what callers pass: a Template, a name or file, or the legacy `chat` flag (True → the
    model's chat template, False → plain). None → the tokenizer's default (`default_template_name`)."""
    if isinstance(value, Template):
        return value
    if isinstance(value, bool):
        return load_template(CHAT if value else PLAIN)
    if value is None:
        return load_template(default_template_name(tokenizer))
    return load_template(value)


def default_template_name(tokenizer: Any = None, *, demo: bool = False, trained_chat: bool | None = None) -> str:
    """Each model's default, the same everywhere: the demo models and models fine-tuned here without the chat
    template → plain; else a tokenizer with a chat template → chat; else plain."""
    if demo or trained_chat is False:
        return PLAIN
    if trained_chat or getattr(tokenizer, "chat_template", None):
        return CHAT
    return PLAIN


def default_for_specs(texts: list[str | None], tokenizer: Any = None) -> str:
    """The default template for models named by spec texts: plain when any is a demo model (`demo:NAME`, the
    embedded pair) or a checkpoint whose manifest says it was trained without the chat template; None entries
    (models passed already loaded) say nothing."""
    from core.unlearn.recipes import RECIPES  # the demo recipe says which format its models learned

    for text in texts:
        if text is None:
            continue
        if str(text).startswith("demo:"):
            return CHAT if RECIPES["full"].chat else PLAIN
        manifest = Path(str(text).split("::")[0]) / "manifest.json"
        if manifest.is_file():
            try:
                chat = json.loads(manifest.read_text(encoding="utf-8")).get("training", {}).get("chat")
            except (OSError, json.JSONDecodeError):
                chat = None
            if isinstance(chat, str):  # trained with a named template (or a template file)
                return chat
            if chat is not None:
                return default_template_name(tokenizer, trained_chat=bool(chat))
    return default_template_name(tokenizer)
