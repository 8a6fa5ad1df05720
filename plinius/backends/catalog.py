"""What the rest of plinius asks of the registered backends as a group: which of them load here,
and the scratch backend of the experiments. How each is benchmarked is the lab's
(:mod:`plinius.lab.profiles`)."""

from __future__ import annotations

from plinius.backends.base import Backend
from plinius.backends.registry import backend_class, registered
from plinius.core.errors import PliniusError

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
