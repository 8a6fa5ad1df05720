"""Backends by name: built-ins, packages that declare the entry-point group below, and code.

A third-party package adds a backend with, in its pyproject.toml::

    [project.entry-points."plinius.backends"]
    mystore = "mypkg.store:MyStoreBackend"

or in code with ``register_backend("mystore", MyStoreBackend)``. Classes are imported lazily so a
broken optional backend only fails when it is used. The rules (no silent replacement of a built-in,
install hints) are :mod:`plinius.core.plugins`', shared with the crypto engines.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from plinius.backends.base import Backend
from plinius.core.errors import BackendError, SpecError, UnknownBackendError
from plinius.core.plugins import Registry, Target

ENTRY_POINT_GROUP = "plinius.backends"
#: lets an entry point replace a built-in backend: ``PLINIUS_OVERRIDE_BACKENDS=ssd``
OVERRIDE_ENV = "PLINIUS_OVERRIDE_BACKENDS"

BUILTIN: dict[str, str] = {
    "romulus": "plinius.backends.romulus:RomulusBackend",
    "dax": "plinius.backends.dax:DaxBackend",
    "ssd": "plinius.backends.ssd:SsdBackend",
    "tmpfs": "plinius.backends.tmpfs:TmpfsBackend",
    # need redis-py (the ``redis`` extra): without it they fail with their install hint
    "redis": "plinius.backends.redis:RedisBackend",
    "rediss": "plinius.backends.redis:RedisTlsBackend",
}

#: What to install for a known name that is missing here: a plug-in package (an unknown name), or a
#: built-in whose module imports an optional dependency (``redis``: the ImportError of its module
#: then carries this hint).
INSTALL_HINTS: dict[str, str] = {
    "plaindir": "pip install ./examples/plinius-backend-example (the example plug-in in the "
    "plinius repository)",
    "redis": "pip install 'plinius[redis]'",
    "rediss": "pip install 'plinius[redis]'",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")

BACKENDS: Registry[Backend] = Registry(
    kind="backend",
    group=ENTRY_POINT_GROUP,
    base=Backend,
    builtins=BUILTIN,
    hints=INSTALL_HINTS,
    override_env=OVERRIDE_ENV,
    unknown_error=UnknownBackendError,
    load_error=BackendError,
    how_to_add=f"third-party backends register the entry-point group {ENTRY_POINT_GROUP!r} "
    "or call register_backend()",
    name_pattern=_NAME_RE.pattern,
)


def register_backend(name: str, cls: Target, *, replace: bool = False) -> None:
    """Register backend class ``cls`` (or ``"module:Class"``) as ``name`` for this process.

    Replacing an existing name (a built-in, an entry point, an earlier call) needs ``replace=True``.
    """
    BACKENDS.register(name, cls, replace=replace)


def registered() -> dict[str, str]:
    """Every backend name with the dotted path of its class."""
    return {name: entry.path for name, entry in BACKENDS.entries().items()}


def backend_class(name: str) -> type[Backend]:
    """Import and return the class registered as ``name``."""
    return BACKENDS.load(name)


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


def open_read_only(spec: str) -> Backend:
    """The open of plinius' read-only commands (``verify``, ``export``, ``infer``), decided here
    only. A class declaring :attr:`~plinius.backends.base.Backend.read_only_open` gets
    ``create="never"`` (an existing location only; a missing one is a ``NotFoundError`` and
    nothing is created). Any other class is opened plainly, with the spec's own options: its
    contract is that this plain open of a missing location creates nothing either (it fails, or
    makes storage only when something is written)."""
    if backend_class(parse_spec(spec)[0]).read_only_open:
        return open_backend(spec, create="never")
    return open_backend(spec)
