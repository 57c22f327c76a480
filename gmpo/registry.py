"""Name tables: the one place a kind of part (loss, preset, reward, rollout backend, sink, template) is listed.

A :class:`Registry` maps names to objects plus metadata (what the config needs to know: accepted
reductions, default clip epsilons, options). Entries are added next to the code they name, with
:meth:`Registry.add` as a call or a decorator; an entry may be *lazy*, a ``"package.module:attr"`` string
imported on first :meth:`get`, so that listing names and metadata (config validation, ``--help``) never
imports torch or a web stack. Config choices and help text are generated from these tables, so adding a
part is one edit in one place. Unknown names raise a :class:`KeyError`-compatible ValueError listing the
choices and suggesting the closest one.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Entry:
    """One registered name: the object (or a lazy ``module:attr`` string), a one-line help, metadata."""

    name: str
    target: Any
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """The object, importing a lazy ``module:attr`` target on first use."""
        if isinstance(self.target, str) and ":" in self.target:
            mod, _, attr = self.target.partition(":")
            self.target = getattr(importlib.import_module(mod), attr)
        return self.target


class UnknownName(ValueError, KeyError):
    """A name that is not in a registry (the message lists the valid ones)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    """Names of one kind of part (``kind`` is used in messages: "loss", "reward", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, target: Any = None, *, help: str = "", overwrite: bool = False, **meta) -> Any:
        """Register `target` under `name` (returns it); without `target`, a decorator that registers its argument."""
        def put(obj: Any) -> Any:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
            if name in self._entries and not overwrite:
                raise ValueError(f"{self.kind} '{name}' is already registered (pass overwrite=True to replace it)")
            doc = help
            if not doc and not isinstance(obj, (str, dict)):  # a function or class: the first docstring line
                doc = (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, doc, dict(meta))
            return obj

        return put if target is None else put(target)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._entries)

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of `name` (UnknownName listing the choices otherwise)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UnknownName(f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self._entries)}") from None

    def get(self, name: str) -> Any:
        """The object registered as `name` (imported on first use when lazy)."""
        return self.entry(name).load()

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata of `name` (no import)."""
        return self.entry(name).meta

    def describe(self) -> str:
        """``name (help); name (help)...`` for help texts."""
        return "; ".join(f"{e.name}" + (f" ({e.help})" if e.help else "") for e in self._entries.values())


def choice_text(registry: Registry, extra: str = "") -> str:
    """``a | b | c`` for a config comment, optionally followed by `extra`."""
    return " | ".join(registry.names()) + (f" {extra}" if extra else "")


__all__ = ["Entry", "Registry", "UnknownName", "choice_text"]
