"""Embedded defaults: where default backend instances live and which specs a bare command uses.

``PLINIUS_SHM_DIR`` (default ``/dev/shm``) holds RAM-backed instances (``tmpfs``, emulated-PM
``romulus``); ``PLINIUS_DISK_DIR`` (default ``/var/tmp``) holds disk-backed ones (``ssd``, ``dax``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from plinius.backends.registry import backend_class, registered
from plinius.errors import NotFoundError

DEFAULT_BACKENDS = ("romulus", "tmpfs", "dax", "ssd")


def root_dir(kind: str) -> Path:
    if kind == "shm":
        return Path(os.environ.get("PLINIUS_SHM_DIR", "/dev/shm"))
    return Path(os.environ.get("PLINIUS_DISK_DIR", "/var/tmp"))


def default_spec(name: str, directory: str | os.PathLike[str]) -> str:
    """Spec of backend ``name`` placed inside ``directory``."""
    return f"{name}:{backend_class(name).location_in(str(directory))}"


@contextmanager
def scratch_specs(names: tuple[str, ...] | list[str]) -> Iterator[dict[str, str]]:
    """Throw-away instances of ``names``, each on its default root, removed on exit."""
    made: list[Path] = []
    specs: dict[str, str] = {}
    try:
        for name in names:
            root = root_dir(backend_class(name).default_root)
            if not root.is_dir():
                raise NotFoundError(
                    f"{root} does not exist; set PLINIUS_SHM_DIR / PLINIUS_DISK_DIR"
                )
            d = Path(tempfile.mkdtemp(prefix=f"plinius-{name}-", dir=root))
            made.append(d)
            specs[name] = default_spec(name, d)
        yield specs
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def all_backend_names() -> list[str]:
    """Registered names with the default ones first, in the order reports show them."""
    names = registered()
    first = [n for n in DEFAULT_BACKENDS if n in names]
    return first + sorted(set(names) - set(first))


@contextmanager
def instances(names: list[str], explicit: dict[str, str]) -> Iterator[dict[str, str]]:
    """Fresh scratch instances of ``names`` plus the user's explicit specs (reused as given)."""
    with scratch_specs(names) as scratch:
        yield {**scratch, **explicit}
