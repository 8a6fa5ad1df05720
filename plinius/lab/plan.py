"""Embedded defaults: where default backend instances live and which specs a bare command uses.

``PLINIUS_SHM_DIR`` (default ``/dev/shm``) holds RAM-backed instances (``tmpfs``, emulated-PM
``romulus``); ``PLINIUS_DISK_DIR`` (default ``/var/tmp``) holds disk-backed ones (``ssd``, ``dax``).
Which root a backend uses, which backends are the default ones and the instances of the default
benchmark plan are the lab's profiles of the backends (:mod:`plinius.lab.profiles`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from plinius.backends.registry import backend_class, registered
from plinius.core.errors import ConfigError, NotFoundError, PliniusError
from plinius.lab.profiles import (
    InstancePlan,
    default_backends,
    default_instances,
    default_spec,
    profile,
    root_dir,
)


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
    first = [n for n in default_backends() if n in names]
    return first + sorted(set(names) - set(first))


@contextmanager
def instances(names: list[str], explicit: dict[str, str]) -> Iterator[dict[str, str]]:
    """Fresh scratch instances of ``names`` plus the user's explicit specs (reused as given)."""
    with scratch_specs(names) as scratch:
        yield {**scratch, **explicit}


# -- the benchmark plan: backend *instances*, not backend names -----------------------------------
# Two instances of one backend (other options, another location) are two rows everywhere. What an
# instance's durability and emulation are is never decided here: the backend's ``describe()``
# says, once the instance is open.


def default_plan() -> tuple[InstancePlan, ...]:
    """The default ``plinius bench`` plan: enough instances that every comparison is like for
    like, as the backends' lab profiles declare them (``instances``, ``order``).

    The built-ins give, at process-crash durability (RAM): ``romulus`` (emulated PM on tmpfs)
    against ``tmpfs``; at power-fail durability (the disk): ``romulus?mode=msync`` on the disk
    beside ``ssd`` and ``dax``; and the optional PM device model. The durability each instance
    really has is read from its ``describe()`` after opening it.
    """
    return tuple(replace(i, name=name, order=None) for name, i in default_instances())


def __getattr__(name: str) -> tuple[InstancePlan, ...]:
    """``DEFAULT_PLAN``: built on use, so importing this module imports no backend class."""
    if name == "DEFAULT_PLAN":
        return default_plan()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unique_labels(plan: list[InstancePlan]) -> list[InstancePlan]:
    """``plan`` with distinct labels: instances sharing ``name?options`` get ``@location``.

    The same instance twice (same label and location) is refused: it would be one row.
    """
    seen: dict[tuple[str, str | None], InstancePlan] = {}
    for p in plan:
        key = (p.label, p.location)
        if key in seen:
            where = f" at {p.location}" if p.location else ""
            raise ConfigError(f"backend instance {p.label}{where} is given twice")
        seen[key] = p
    counts: dict[str, int] = {}
    for p in plan:
        counts[p.label] = counts.get(p.label, 0) + 1
    out = []
    for p in plan:
        if counts[p.label] > 1:
            where = p.location or f"{p.root_kind()} root"
            p = replace(p, label_suffix=f"@{where}")
        out.append(p)
    if len({p.label for p in out}) != len(out):
        raise ConfigError(
            "two backend instances would share a label: " + ", ".join(p.label for p in out)
        )
    return out


def modelled(plan: list[InstancePlan]) -> dict[str, str]:
    """``{model's label: label of the instance it delays}`` for every device model of ``plan``
    (an instance with its profile's ``model_option``), whoever gave it a role; the value is ""
    when the modelled instance (same backend, root and options, without the model) is not in
    the plan."""
    out: dict[str, str] = {}
    for p in plan:
        opt = profile(p.name).model_option
        opts = dict(p.options)
        if opt is None or opts.get(opt, "none") == "none":
            continue
        base = {k: v for k, v in opts.items() if k != opt}
        twin = next(
            (
                q
                for q in plan
                if q.name == p.name
                and dict(q.options) == base
                and q.spec is None
                and p.spec is None
                and q.root_kind() == p.root_kind()
            ),
            None,
        )
        out[p.label] = twin.label if twin else ""
    return out


def probe(p: InstancePlan) -> str | None:
    """None if the backend accepts ``p``'s options; else why not (a throw-away instance, or the
    class itself when it cannot be loaded, e.g. an optional dependency that is not installed)."""
    try:
        cls = backend_class(p.name)
    except PliniusError as exc:
        return str(exc)
    root = root_dir(p.root_kind())
    with tempfile.TemporaryDirectory(prefix=f"plinius-probe-{p.name}-", dir=root) as d:
        try:
            backend = cls(cls.location_in(d), **{**cls.probe_options, **dict(p.options)})
        except PliniusError as exc:
            return str(exc)
        backend.close()
    return None


@contextmanager
def plan_instances(plan: list[InstancePlan]) -> Iterator[list[tuple[InstancePlan, str]]]:
    """``(instance, spec)`` for every instance of ``plan``: fresh scratch directories for the
    planned ones (removed on exit), the user's specs as given."""
    made: list[Path] = []
    out: list[tuple[InstancePlan, str]] = []
    try:
        for p in plan:
            if p.spec is not None:
                out.append((p, p.spec))
                continue
            root = root_dir(p.root_kind())
            if not root.is_dir():
                raise NotFoundError(
                    f"{root} does not exist; set PLINIUS_SHM_DIR / PLINIUS_DISK_DIR"
                )
            d = Path(tempfile.mkdtemp(prefix=f"plinius-{p.name}-", dir=root))
            made.append(d)
            out.append((p, p.spec_in(d)))
        yield out
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
