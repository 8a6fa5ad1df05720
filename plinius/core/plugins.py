"""Named plug-ins with one set of rules: storage backends and crypto engines both use it.

A :class:`Registry` knows a kind's built-ins, the classes installed packages declare in an
entry-point group, and classes registered in code. The rules live here once so the two kinds
cannot drift apart:

* Targets are classes or lazy ``"module:Class"`` strings: a broken optional plug-in fails only
  when it is used, with an install hint when its name is in the hint table (a missing plug-in,
  or a built-in whose optional dependency is not installed).
* A name is never replaced silently. An entry point that names a built-in (or another
  distribution's entry point) is refused with an error naming its distribution, unless the user
  opts in by listing the name in the registry's override variable
  (``PLINIUS_OVERRIDE_BACKENDS=ssd``) or registers the replacement in code with ``replace=True``.
  Code registrations win over both.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, cast

from plinius.core.errors import PliniusError, PluginConflictError

T = TypeVar("T")
Target = type | str
#: whether a plug-in's optional dependencies are installed here
Usable = Callable[[], bool]
BuiltinSpec = Target | tuple[Target, Usable]


@dataclass(frozen=True)
class Entry:
    """One registered name: what it points to and where that came from."""

    name: str
    target: Target
    origin: str
    usable: Usable | None = None

    @property
    def path(self) -> str:
        """The target as ``module:Class`` (what ``registered()`` lists)."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"


def entry_point_origin(ep: EntryPoint) -> str:
    """``entry point NAME = VALUE of distribution DIST``: what a conflict error names."""
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    return f"entry point {ep.name} = {ep.value} of distribution {dist}"


class Registry(Generic[T]):
    """Names → classes of one plug-in kind (``T`` is the base class every target must subclass)."""

    def __init__(
        self,
        *,
        kind: str,
        group: str,
        base: type,  # type[T], but mypy refuses an abstract class there
        builtins: Mapping[str, BuiltinSpec],
        hints: Mapping[str, str],
        override_env: str,
        unknown_error: type[PliniusError],
        load_error: type[PliniusError],
        how_to_add: str,
        name_pattern: str = r"^[a-z][a-z0-9_-]*$",
    ) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self.builtins = builtins  # kept by reference: the owner's table stays the one truth
        self.hints = hints
        self.override_env = override_env
        self.unknown_error = unknown_error
        self.load_error = load_error
        self.how_to_add = how_to_add
        self._name_re = re.compile(name_pattern)
        self._in_code: dict[str, Entry] = {}
        self._scanned: tuple[tuple[object, ...], tuple[EntryPoint, ...]] | None = None

    def _entry_points(self) -> tuple[EntryPoint, ...]:
        """The group's entry points, scanned once per ``sys.path`` (a scan costs milliseconds)."""
        key = (entry_points, tuple(sys.path))
        if self._scanned is None or self._scanned[0] != key:
            self._scanned = (key, tuple(entry_points(group=self.group)))
        return self._scanned[1]

    def _overridable(self) -> set[str]:
        raw = os.environ.get(self.override_env, "")
        return {n.strip() for n in raw.split(",") if n.strip()}

    def entries(self) -> dict[str, Entry]:
        """Every name, built-ins first; raises :class:`PluginConflictError` on a silent override."""
        out: dict[str, Entry] = {}
        for name, spec in self.builtins.items():
            target, usable = spec if isinstance(spec, tuple) else (spec, None)
            out[name] = Entry(name, target, f"built-in {self.kind}", usable)
        allowed = self._overridable()
        for ep in self._entry_points():
            prev = out.get(ep.name)
            if prev is not None and ep.name not in self._in_code and ep.name not in allowed:
                if prev.path == ep.value:
                    continue  # the same target declared twice (one package seen twice): harmless
                raise PluginConflictError(
                    f"{entry_point_origin(ep)} would replace the {prev.origin} {ep.name!r}: "
                    f"uninstall one, or set {self.override_env}={ep.name} to let it"
                )
            out[ep.name] = Entry(ep.name, ep.value, entry_point_origin(ep))
        out.update(self._in_code)
        return out

    def register(
        self, name: str, target: Target, *, usable: Usable | None = None, replace: bool = False
    ) -> None:
        """Add ``name`` in code; replacing an existing name needs ``replace=True``."""
        if not self._name_re.match(name):
            raise PluginConflictError(
                f"invalid {self.kind} name {name!r}: use lower-case letters, digits, - and _, "
                "starting with a letter"
            )
        if not isinstance(target, str | type):
            raise TypeError(f"register a class or a 'module:Class' string, not {target!r}")
        if isinstance(target, type) and not issubclass(target, self.base):
            raise TypeError(f"{target!r} is not a plinius {self.base.__name__} subclass")
        if not replace and name not in self._in_code:
            prev = self.entries().get(name)
        else:
            prev = self._in_code.get(name)
        if prev is not None and not replace:
            raise PluginConflictError(
                f"{self.kind} {name!r} is already registered ({prev.origin}, {prev.path}): "
                "pass replace=True to replace it"
            )
        self._in_code[name] = Entry(name, target, f"{self.kind} registered in code", usable)

    def unregister(self, name: str) -> None:
        """Drop a registration made in code (built-ins and entry points stay)."""
        self._in_code.pop(name, None)

    def _hint(self, name: str) -> str:
        hint = self.hints.get(name)
        return f"; install it with: {hint}" if hint else ""

    def get(self, name: str) -> Entry:
        entries = self.entries()
        if name not in entries:
            hint = self._hint(name)
            raise self.unknown_error(
                f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(sorted(entries))} "
                f"({self.how_to_add})"
            )
        return entries[name]

    def load(self, name: str) -> type[T]:
        """Import and return the class registered as ``name``."""
        entry = self.get(name)
        target = entry.target
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                obj: object = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except ImportError as exc:
                raise self.load_error(
                    f"{self.kind} {name!r} ({target}) cannot be loaded: {exc}{self._hint(name)}"
                ) from exc
            except Exception as exc:  # a plug-in's own import-time bug names the plug-in
                raise self.load_error(
                    f"{self.kind} {name!r} ({target}) cannot be loaded: {exc!r}"
                ) from exc
        else:
            obj = target
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise self.load_error(
                f"{self.kind} {name!r} ({entry.path}) is not a plinius {self.base.__name__} "
                "subclass"
            )
        return cast("type[T]", obj)

    def is_usable(self, name: str) -> bool:
        """Whether ``name`` can be used here: its check passes, or (without one) it imports."""
        entry = self.get(name)
        if entry.usable is not None:
            return entry.usable()
        try:
            self.load(name)
        except self.load_error:
            return False
        return True

    def load_usable(self, name: str) -> type[T]:
        """:meth:`load`, refusing a plug-in whose optional dependencies are missing (hinted)."""
        entry = self.get(name)
        if entry.usable is not None and not entry.usable():
            hint = self.hints.get(name)
            raise self.load_error(
                f"{self.kind} {name!r} is not installed" + (f": {hint}" if hint else "")
            )
        return self.load(name)
