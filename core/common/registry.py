"""One registry type for every "name → entry" table in the project (metrics, methods, attacks, evaluations).

Each table used to be a dict with its own `register` and its own unknown-name message; a `Registry` gives them one
way to register (a decorator that refuses a name twice), one lookup whose error lists the known names, iteration in
registration order, and one `describe()` of every entry's declared options for the CLI's listings.

Entries declare their settings as `option_specs: tuple[Option, ...]` (core.common.options); an entry without it
takes none. A registry can name `providers`: modules that register its entries and are imported on its first
read, so a registry filled by a module that imports the registry's own module is complete whatever was imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from core.common.errors import UserError
from core.common.options import Option

T = TypeVar("T")


def declared_options(entry: Any) -> tuple[Option, ...]:
    """The options an entry declares (`option_specs`), or none."""
    return tuple(getattr(entry, "option_specs", ()))


def _summary(entry: Any) -> str:
    """An entry's one-line description: `description`, `summary` or the first line of its docstring."""
    for attribute in ("description", "summary"):
        text = getattr(entry, attribute, None)
        if isinstance(text, str) and text:
            return text
    return ((getattr(entry, "__doc__", None) or "").strip().splitlines() or [""])[0]


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    `kind` names an entry in messages ("unknown attack 'x'"). With `instantiate`, registering a class stores one
    instance of it (stateless entries used through their methods); the decorator still returns the class.
    """

    def __init__(self, kind: str, *, instantiate: bool = False, providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.instantiate = instantiate
        self.providers = providers
        self._entries: dict[str, T] = {}
        self._loaded = not providers

    @overload
    def register(self, entry: Any, *, name: str | None = None) -> Any: ...

    @overload
    def register(self, entry: None = None, *, name: str | None = None) -> Callable[[Any], Any]: ...

    def register(self, entry: Any = None, *, name: str | None = None) -> Any:
        """Add `entry` under `name` (else its `name` attribute, else its `__name__`) and return it unchanged.

        Usable as `@registry.register` or `@registry.register(name="x")`; a name registered twice is a ValueError
        (a programming error: two entries would silently shadow each other)."""
        if entry is None:
            return lambda decorated: self.register(decorated, name=name)
        key = name or _entry_name(entry)
        if key in self._entries:
            raise ValueError(f"{self.kind} {key!r} is registered twice")
        self._entries[key] = entry() if self.instantiate and isinstance(entry, type) else entry
        return entry

    def get(self, name: str) -> T:
        """The entry called `name`, or a UserError naming the registered ones."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" from a hostile caller
            known = ", ".join(self._entries) or "none"
            raise UserError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        self._load()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

    def values(self) -> list[T]:
        self._load()
        return list(self._entries.values())

    def options(self, name: str) -> tuple[Option, ...]:
        """The options the entry called `name` declares."""
        return declared_options(self.get(name))

    def describe(self) -> list[dict[str, Any]]:
        """One row per (entry, option) for listings: name, description, option, type, default, range, help.

        An entry without options gets one row with option "" (so every entry is listed)."""
        rows = []
        for name, entry in self.items():
            base = {"name": name, "description": _summary(entry)}
            declared = declared_options(entry)
            blank = {"option": "", "type": "", "default": "", "range": "", "help": ""}
            rows += [base | _option_row(option) for option in declared] or [base | blank]
        return rows

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def _load(self) -> None:
        """Import the provider modules once; they register entries (into this registry) as they load."""
        if self._loaded:
            return
        self._loaded = True  # first: a provider that reads this registry while loading must not recurse
        try:
            for module in self.providers:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise


def _entry_name(entry: Any) -> str:
    name = getattr(entry, "name", None)
    if isinstance(name, str) and name:
        return name
    name = getattr(entry, "__name__", None)
    if not name:
        raise ValueError(f"cannot tell the name of {entry!r}; pass name=")
    return name


def _option_row(option: Option) -> dict[str, Any]:
    return {
        "option": option.name,
        "type": option.type.__name__,
        "default": option.default,
        "range": option.range,
        "help": option.help,
    }
