"""The benchmark's sections, each one module that registers itself (like the CLI's subcommands).

A :class:`Section` says what it measures and how: ``run`` (a section on its own, given the
:class:`SuiteOptions`; what it returns is saved under its name in results.json) or
``contenders`` (things timed in the interleaved rounds of each workload, beside every other
section's, so slow drifts of a noisy VM spread over all of them); ``targets`` (the bars it sets,
added to the one targets table); ``render`` (its part of report.md) and ``figures``. The suite,
the CLI (``--only``/``--skip``), the targets table, the report and the asv harness find sections
here and nowhere else: a new section is one new module in :mod:`plinius.lab.bench.sections`, or any
module named in the ``plinius.bench_sections`` entry-point group, that calls :func:`register`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from plinius.core.crypto import Engine
from plinius.core.errors import ConfigError
from plinius.lab.bench.contenders import Contender, Samples
from plinius.lab.bench.contention import Extension
from plinius.lab.bench.saverestore import BenchModel
from plinius.lab.bench.verdicts import TargetTable
from plinius.lab.profiles import InstancePlan

ENTRY_POINT_GROUP = "plinius.bench_sections"
#: the workload the targets are read at (the paper's 64 MiB model), when it ran
TARGET_WORKLOAD = "size-64"


class NotRun(Exception):
    """A section cannot run here (a tool or an extra is missing, a workload it does not take):
    the report says why, the other sections run."""


@dataclass
class SuiteOptions:
    """What the user chose for one ``plinius bench`` run: every section sees it."""

    plan: list[InstancePlan]  # every backend instance of the save section, labels distinct
    sizes: list[float]
    repeats: int  # interleaved rounds (the name results.json has always used)
    engine: Engine
    quick: bool = False
    sections: tuple[str, ...] = ()  # () = every registered section
    fio_options: dict[str, Any] = field(default_factory=dict)
    workloads: tuple[str, ...] = ()  # named real-model workloads beside the size-N models
    #: more rounds while the machine is contended (None: exactly ``repeats``)
    extension: Extension | None = None
    #: the distributed section's ranks (``--world-size``; None: its default)
    world_size: int | None = None

    def __post_init__(self) -> None:
        if not self.sections:
            self.sections = section_names()

    @property
    def backends(self) -> list[str]:
        """The backend names of the plan (fio characterises each one's storage once)."""
        return list(dict.fromkeys(p.name for p in self.plan))

    @property
    def rounds(self) -> int:
        return self.repeats

    @property
    def models(self) -> list[str]:
        """Every workload of the rounds: the size-N models, then the named ones."""
        return list(dict.fromkeys([*(f"size-{s:g}" for s in self.sizes), *self.workloads]))

    @property
    def full(self) -> list[str]:
        """The workloads the sections that take full workloads only (peers, limits, torch)
        run on: the named ones and the paper's size-64 model (else the largest size-N)."""
        sized = [f"size-{s:g}" for s in self.sizes]
        head = [TARGET_WORKLOAD] if TARGET_WORKLOAD in sized else []
        if self.sizes and not head:
            head = [f"size-{max(self.sizes):g}"]
        return list(dict.fromkeys([*head, *self.workloads]))

    def chosen(self) -> list[Section]:
        return [s for s in sections() if s.name in self.sections]

    @property
    def in_rounds(self) -> bool:
        return any(s.contenders is not None for s in self.chosen())


@dataclass
class WorkloadContext:
    """What a rounds section gets for one workload of one run."""

    options: SuiteOptions
    model: BenchModel
    #: this workload takes every section (else only those with ``full_only=False``)
    full: bool
    stack: ExitStack
    #: ``(label, spec)`` of fresh backend instances for this workload (the save section's)
    instances: list[tuple[str, str]]
    roles: dict[str, str]
    dirs_factory: Callable[[], AbstractContextManager[dict[str, Path]]] | None = None
    #: what a section keeps between ``contenders`` and ``collect``, by section name
    state: dict[str, Any] = field(default_factory=dict)
    _dirs: dict[str, Path] | None = None

    @property
    def engine(self) -> Engine:
        return self.options.engine

    def scratch_dirs(self) -> dict[str, Path]:
        """Fresh directories (``tmpfs`` in RAM, ``ssd`` on the disk) for this workload, made
        on first use and removed after its rounds."""
        if self._dirs is None:
            made = self.dirs_factory() if self.dirs_factory else None
            self._dirs = self.stack.enter_context(made) if made is not None else {}
        return self._dirs


Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Section:
    """One benchmark section (see the module's docstring)."""

    name: str
    summary: str
    #: position among the sections: in the rounds, in the run, in the report
    order: int
    run: Callable[[SuiteOptions], Any] | None = None
    contenders: Callable[[WorkloadContext], Sequence[Contender]] | None = None
    #: after a workload's rounds: the result rows of this section's contenders (results.json
    #: ``results``), from their samples by contender key
    collect: Callable[[WorkloadContext, Mapping[tuple[str, str, str], Samples]], Rows] | None = None
    #: rounds sections: run only on the full workloads (the named ones and size-64)
    full_only: bool = True
    targets: Callable[[Mapping[str, Any], TargetTable], None] | None = None
    render: Callable[[Mapping[str, Any]], list[str]] | None = None
    figures: Callable[[Mapping[str, Any], Path], list[Path]] | None = None
    #: rounds sections: the contender ids ``contenders`` would give for these options, without
    #: building anything (whether or not the section can run here: one that cannot raises
    #: :class:`NotRun` when built); the asv harness makes its parameters from them at import
    ids: Callable[[SuiteOptions], list[str]] | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.contenders is None):
            raise ConfigError(f"bench section {self.name!r}: give exactly one of run, contenders")


_REGISTRY: dict[str, Section] = {}
_discovered = False


def register(section: Section) -> Section:
    """Add ``section``; a second section of the same name is a ConfigError."""
    old = _REGISTRY.get(section.name)
    if old is not None and old != section:
        raise ConfigError(f"bench section {section.name!r} is registered twice")
    _REGISTRY[section.name] = section
    return section


def unregister(name: str) -> None:
    """Remove a section (tests that add a toy one)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import plinius.lab.bench.sections as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # a broken plug-in section fails loudly: it was asked for by installing it


def sections() -> list[Section]:
    """Every registered section, in order."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name))


def section_names() -> tuple[str, ...]:
    return tuple(s.name for s in sections())


def section(name: str) -> Section:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"no bench section {name!r}; choose from {', '.join(section_names())}"
        ) from None


def each(names: Sequence[str] | None = None) -> Iterator[Section]:
    """The registered sections named in ``names`` (all when None), in order."""
    for s in sections():
        if names is None or s.name in names:
            yield s
