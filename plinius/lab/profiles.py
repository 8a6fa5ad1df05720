"""What the lab knows of each backend: plot marker, baseline, place in the default plan, fio.

The storage contract (:class:`plinius.backends.base.Backend`) keeps only I/O and capability
facts; how a backend is benchmarked, characterised with fio and drawn lives here, keyed by the
backend's registry name. A plug-in backend without a profile still benchmarks with the defaults
of :class:`Profile` (joins the default plan once on its default root, drawn with ``x``); one
that wants more registers a profile with :func:`register_profile`, or names a module that does
in the ``plinius.profiles`` entry-point group.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from plinius.backends.base import Backend
from plinius.backends.catalog import loadable
from plinius.backends.fsinfo import MountInfo, mount_label
from plinius.backends.registry import backend_class, parse_spec

Root = Literal["shm", "disk"]
FioEngine = Callable[[str, MountInfo, Collection[str] | None], tuple[str | None, dict[str, str]]]
FioFacts = Callable[[type[Backend], str, MountInfo], tuple[bool, list[str]]]

PROFILE_GROUP = "plinius.profiles"


def root_dir(kind: str) -> Path:
    if kind == "shm":
        return Path(os.environ.get("PLINIUS_SHM_DIR", "/dev/shm"))
    return Path(os.environ.get("PLINIUS_DISK_DIR", "/var/tmp"))


def default_spec(name: str, directory: str | os.PathLike[str]) -> str:
    """Spec of backend ``name`` placed inside ``directory``."""
    return f"{name}:{backend_class(name).location_in(str(directory))}"


@dataclass(frozen=True)
class InstancePlan:
    """One backend instance a benchmark runs: a registered name, its options and where it lives.

    ``spec`` is the user's full spec (reused as given); without it a scratch instance is made on
    ``root`` (``"shm"`` or ``"disk"``; default: the backend class's own ``default_root``).
    """

    name: str
    options: tuple[tuple[str, str], ...] = ()
    root: Root | None = None
    spec: str | None = None
    role: str = ""
    #: run only if the backend accepts ``options`` (probed before the run; else reported as not run)
    optional: bool = False
    #: set when two instances would otherwise share a label
    label_suffix: str = ""
    #: position in the default plan across all backends (default: the profile's ``order``)
    order: int | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """``name?opt=v&...`` (sorted options): what every table, plot and JSON row shows."""
        opts = "&".join(f"{k}={v}" for k, v in sorted(self.options))
        return self.name + (f"?{opts}" if opts else "") + self.label_suffix

    @property
    def location(self) -> str | None:
        return None if self.spec is None else parse_spec(self.spec)[1]

    def root_kind(self) -> Root:
        return self.root or backend_class(self.name).default_root

    def spec_in(self, directory: str | os.PathLike[str]) -> str:
        """The spec of this instance placed inside ``directory`` (scratch instances)."""
        opts = "&".join(f"{k}={v}" for k, v in self.options)
        return default_spec(self.name, directory) + (f"?{opts}" if opts else "")

    @classmethod
    def from_spec(cls, spec: str, role: str = "") -> InstancePlan:
        """A user's full spec ``NAME:LOCATION?opts``, used as given."""
        name, _, options = parse_spec(spec)
        backend_class(name)
        return cls(name, tuple(sorted(options.items())), spec=spec, role=role)

    @classmethod
    def from_text(cls, text: str) -> InstancePlan:
        """``NAME`` or ``NAME?opt=v`` (a scratch instance) or ``NAME:LOCATION?opt=v`` (as given)."""
        if ":" in text.split("?", 1)[0]:
            return cls.from_spec(text)
        name, _, query = text.partition("?")
        backend_class(name)
        _, _, options = parse_spec(f"{name}:-" + (f"?{query}" if query else ""))
        return cls(name, tuple(sorted(options.items())))


def _plain_file_engine(
    requested: str, mount: MountInfo, engines: Collection[str] | None
) -> tuple[str | None, dict[str, str]]:
    return None, {}


def file_facts(cls: type[Backend], engine: str, mount: MountInfo) -> tuple[bool, list[str]]:
    """Emulated when the measured mount is not the file system the backend ``expects``."""
    where = mount_label(mount)
    expects = getattr(cls, "expects", "")
    if expects == "dax":
        if mount.dax:
            return False, [f"DAX mount: {where}"]
        return True, [f"DAX emulated: {where} is not mounted -o dax (page-cache I/O)"]
    if expects == "" and mount.volatile:
        return True, [f"not a disk: {where} is RAM-backed"]
    if expects == "tmpfs" and not mount.volatile:
        return True, [f"not RAM-backed: {where}"]
    return False, []


def pm_engine(
    requested: str, mount: MountInfo, engines: Collection[str] | None
) -> tuple[str | None, dict[str, str]]:
    """fio's ``libpmem`` engine (load/store on a mapping) on a DAX mount when this fio has it,
    or when asked for; forced onto non-PM memory with ``PMEM_IS_PMEM_FORCE=1``."""
    has_pmem = engines is None or "libpmem" in engines
    if requested == "libpmem" or (requested == "auto" and mount.dax and has_pmem):
        return "libpmem", {} if mount.dax else {"PMEM_IS_PMEM_FORCE": "1"}
    return None, {}


def pm_facts(cls: type[Backend], engine: str, mount: MountInfo) -> tuple[bool, list[str]]:
    """Real PM only on a DAX mount; anything else stands in for persistent memory."""
    where = mount_label(mount)
    if mount.dax and engine == "libpmem":
        return False, [f"real PM: libpmem engine on DAX {where}"]
    if mount.dax:
        return False, [f"PM via the {engine} engine on DAX {where}: the file path, not load/store"]
    how = (
        "libpmem engine forced onto non-PM memory (PMEM_IS_PMEM_FORCE=1)"
        if engine == "libpmem"
        else f"{engine} engine"
    )
    return True, [f"PM emulated: {how} on {where} stands in for persistent memory"]


@dataclass(frozen=True)
class Profile:
    """How the lab treats one backend. The defaults are what a plug-in without a profile gets."""

    #: matplotlib marker of this backend's lines in every figure
    marker: str = "x"
    #: the paper's baseline: results carry ``speedup_*_vs_<name>`` against its first instance
    baseline: bool = False
    #: position among the default backends (``plinius fio``, ``plinius bench``, report order);
    #: None: not a default one (still run when named, listed after the default ones)
    order: int | None = None
    #: the instances this backend contributes to the default ``plinius bench`` plan
    instances: tuple[InstancePlan, ...] = (InstancePlan(""),)
    #: without an ``order``, still join the default plan once on the default root (what a
    #: plug-in gets); False for a second name of a backend benchmarked under its first
    extra: bool = True
    #: the fio engine that stands for the backend's access path (None: the plain file engine)
    fio_engine: FioEngine = _plain_file_engine
    #: (emulated?, notes) when fio measures a mount on the backend's behalf
    fio_facts: FioFacts = file_facts
    #: the option that makes an instance a *model* of another device (it only adds delays to
    #: the same instance without the option, which is what it is compared with); "none" as
    #: its value means no model
    model_option: str | None = None


def _planned(role: str, **how: Any) -> InstancePlan:
    """One instance of a profile's plan (its backend's name is filled in by the plan)."""
    return InstancePlan("", role=role, **how)


PROFILES: dict[str, Profile] = {
    "romulus": Profile(
        marker="o",
        order=10,
        # at process-crash durability (RAM) against tmpfs; msynced to the disk beside the
        # power-fail file backends; the PM device model when this build accepts device=
        instances=(
            _planned("PM pool on the RAM root (the paper's setup)"),
            _planned(
                "PM pool msynced to the disk beside ssd",
                options=(("mode", "msync"),),
                root="disk",
                order=30,
            ),
            _planned(
                "PM device model",
                options=(("device", "optane-1dimm"),),
                optional=True,
                order=60,
            ),
        ),
        fio_engine=pm_engine,
        fio_facts=pm_facts,
        model_option="device",
    ),
    "tmpfs": Profile(marker="s", order=20, instances=(_planned("file in RAM, no fsync"),)),
    "dax": Profile(
        marker="^", order=40, instances=(_planned("file + fsync on a DAX file system"),)
    ),
    "ssd": Profile(
        marker="v",
        baseline=True,
        order=50,
        instances=(_planned("file + fsync on the disk (the paper's baseline)"),),
    ),
    # after the local backends, a private loopback server (AOF, appendfsync always) at each
    # durability level, like the file backends: its AOF in RAM (process-crash) and on the disk
    # (power-fail); optional: without redis-server the plan says "not run" and why
    "redis": Profile(
        marker="P",
        order=70,
        instances=(
            _planned(
                "private redis-server on loopback, AOF (appendfsync always) in RAM: process-crash",
                optional=True,
            ),
            _planned(
                "private redis-server on loopback, AOF (appendfsync always) on the disk: "
                "power-fail",
                root="disk",
                label_suffix="@disk",
                optional=True,
            ),
        ),
    ),
    # benchmarked as redis (a private default instance runs without TLS)
    "rediss": Profile(marker="P", extra=False),
}
_loaded_plugins = False


def register_profile(name: str, profile: Profile) -> None:
    """Give backend ``name`` (a plug-in's) its lab profile."""
    PROFILES[name] = profile


def _load_plugins() -> None:
    """Import every module of the ``plinius.profiles`` group once (each registers its own)."""
    global _loaded_plugins
    if _loaded_plugins:
        return
    _loaded_plugins = True
    for ep in entry_points(group=PROFILE_GROUP):
        try:
            ep.load()
        except Exception:  # a broken plug-in keeps the defaults; naming it shows its error
            continue


def profile(name: str) -> Profile:
    """The profile of backend ``name`` (the defaults when it has none)."""
    _load_plugins()
    return PROFILES.get(name, Profile())


def fio_root(name: str) -> Root | None:
    """The root whose storage ``plinius fio`` characterises for backend ``name``; None when it
    is not file-backed (a remote store), so fio has nothing of it to measure."""
    cls = backend_class(name)
    return cls.default_root if cls.locality == "local" else None


def default_backends() -> list[str]:
    """The default backends, by their profiles' ``order`` (ties by name)."""
    ranked = [(profile(name).order, name) for name in loadable()]
    return [name for order, name in sorted((o, n) for o, n in ranked if o is not None)]


def default_instances() -> list[tuple[str, InstancePlan]]:
    """``(name, instance)`` of every default backend's bench instances, in plan order."""
    ranked: list[tuple[int, int, str, InstancePlan]] = []
    for name in loadable():
        p = profile(name)
        if p.order is None:
            continue
        for i, inst in enumerate(p.instances):
            ranked.append((p.order if inst.order is None else inst.order, i, name, inst))
    ranked.sort(key=lambda r: (r[0], r[2], r[1]))
    return [(name, inst) for _, _, name, inst in ranked]


def is_baseline(name: str) -> bool:
    return profile(name).baseline


def marker(name: str) -> str:
    return profile(name).marker
