"""What the rest of plinius asks of the registered backends as a group, answered from the facts
each backend class declares (see :class:`plinius.backends.base.Backend`), never from names.

The default backends and the default ``plinius bench`` plan are the registered classes with a
``bench_order``, in that order; a backend added by a plug-in joins them by declaring one.
"""

from __future__ import annotations

from typing import Any

from plinius.backends.base import Backend, BenchInstance
from plinius.backends.registry import backend_class, registered
from plinius.errors import PliniusError

#: the backend a bare experiment (``plinius spot``, ``plinius crash-test``) runs its trainers on:
#: files in RAM, nothing left on the disk
DEFAULT_SCRATCH = "tmpfs"


def loadable() -> dict[str, type[Backend]]:
    """Every registered backend whose class imports (a broken plug-in is left out here and
    fails, with its own error, only where it is named)."""
    out: dict[str, type[Backend]] = {}
    for name in registered():
        try:
            out[name] = backend_class(name)
        except PliniusError:
            continue
    return out


def default_backends() -> list[str]:
    """The default backends, by their classes' ``bench_order`` (ties by name)."""
    ranked = [(cls.bench_order, name) for name, cls in loadable().items()]
    return [name for order, name in sorted((o, n) for o, n in ranked if o is not None)]


def default_instances() -> list[tuple[str, BenchInstance]]:
    """``(name, instance)`` of every default backend's bench instances, in plan order."""
    ranked: list[tuple[int, int, str, BenchInstance]] = []
    for name, cls in loadable().items():
        if cls.bench_order is None:
            continue
        for i, inst in enumerate(cls.bench_instances):
            order = cls.bench_order if inst.order is None else inst.order
            ranked.append((order, i, name, inst))
    ranked.sort(key=lambda r: (r[0], r[2], r[1]))
    return [(name, inst) for _, _, name, inst in ranked]


def class_fact(name: str, attr: str, default: Any) -> Any:
    """Class attribute ``attr`` of backend ``name``, or ``default`` when it is not registered
    here (results rows saved on another machine can name backends this one lacks)."""
    try:
        cls = backend_class(name)
    except PliniusError:
        return default
    return getattr(cls, attr, default)
