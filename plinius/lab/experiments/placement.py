"""Where an experiment's runs keep their mirrors: one fresh backend instance per run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from plinius.backends.registry import backend_class, parse_spec
from plinius.core.errors import ConfigError
from plinius.core.fsutil import check_path
from plinius.lab.plan import root_dir


@contextmanager
def run_specs(backend: str, runs: list[str], keep: bool = False) -> Iterator[dict[str, str]]:
    """One spec per run name. ``backend`` is a name (instances under the default roots, removed
    afterwards) or ``NAME:DIRECTORY[?opts]`` (instances created inside DIRECTORY and kept)."""
    if ":" in backend:
        name, location, options = parse_spec(backend)
        base = Path(check_path(location, f"backend {name} directory"))
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create backend directory {base}: {exc.strerror}") from None
        made = None
    else:
        name, options = backend, {}
        cls = backend_class(name)
        base = Path(tempfile.mkdtemp(prefix=f"plinius-{name}-", dir=root_dir(cls.default_root)))
        made = base
    cls = backend_class(name)
    query = "&".join(f"{k}={v}" for k, v in options.items())
    for run in runs:
        (base / run).mkdir(exist_ok=True)
    try:
        yield {
            run: f"{name}:{cls.location_in(str(base / run))}" + (f"?{query}" if query else "")
            for run in runs
        }
    finally:
        if made is not None and not keep:
            shutil.rmtree(made, ignore_errors=True)


def local_instances(specs: Iterable[str]) -> list[Path]:
    """Where the instances among ``specs`` that live on this machine are (the backend class's
    ``locality``, never its name): what a reclaimed VM takes with it. Off-machine ones are left
    out."""
    out = []
    for spec in specs:
        name, location, _ = parse_spec(spec)
        if backend_class(name).locality == "local":
            out.append(Path(location))
    return out


def delete_instances(paths: Iterable[Path]) -> None:
    """Delete instances (a directory, or a pool file) as a VM loss would; the directory that
    holds one stays, as the mount point of the new VM's empty disk."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
