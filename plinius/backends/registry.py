"""Backends by name: built-ins plus any package that registers the entry-point group below.

A third-party package adds a backend with, in its pyproject.toml::

    [project.entry-points."plinius.backends"]
    mystore = "mypkg.store:MyStoreBackend"

Classes are imported lazily so a broken optional backend only fails when it is used.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import parse_qsl

from plinius.backends.base import Backend
from plinius.errors import BackendError, SpecError, UnknownBackendError

ENTRY_POINT_GROUP = "plinius.backends"

BUILTIN: dict[str, str] = {
    "romulus": "plinius.backends.romulus:RomulusBackend",
    "dax": "plinius.backends.dax:DaxBackend",
    "ssd": "plinius.backends.ssd:SsdBackend",
    "tmpfs": "plinius.backends.tmpfs:TmpfsBackend",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def registered() -> dict[str, str]:
    """Every backend name with the dotted path of its class (entry points may add or override)."""
    names = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names[ep.name] = ep.value
    return names


def backend_class(name: str) -> type[Backend]:
    """Import and return the class registered as ``name``."""
    names = registered()
    if name not in names:
        raise UnknownBackendError(
            f"unknown backend {name!r}; registered: {', '.join(sorted(names))} "
            f"(third-party backends register the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    target = names[name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend {name!r} ({target}) cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r} ({target}) is not a plinius Backend subclass")
    return cls


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split ``NAME:LOCATION[?opt=val&...]`` (``NAME://LOCATION`` works too)."""
    name, sep, rest = spec.partition(":")
    if not sep or not _NAME_RE.match(name):
        raise SpecError(
            f"malformed backend spec {spec!r}: expected NAME:LOCATION, e.g. ssd:/var/lib/plinius "
            "or romulus:/dev/shm/plinius.pool?size=1G"
        )
    if rest.startswith("//"):
        rest = rest[2:]
    location, _, query = rest.partition("?")
    if not location:
        raise SpecError(f"backend spec {spec!r} has no location after {name!r}:")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise SpecError(
            f"malformed options {query!r} in spec {spec!r}: use ?key=value&key=value"
        ) from None
    return name, location, options


def open_backend(spec: str, **overrides: Any) -> Backend:
    """Open the backend a spec names; ``overrides`` add or replace spec options."""
    name, location, options = parse_spec(spec)
    cls = backend_class(name)
    return cls(location, **{**options, **overrides})
