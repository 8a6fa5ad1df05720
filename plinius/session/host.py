"""The host-side session: the one place that puts a mirrored training run together.

platform → enclave → the owner's step (the data key unsealed by this enclave, or attested and
provisioned; the host drops the key after this step) → backend sized from what it will hold →
the freshness record of its slot → replicas → restore (a lost primary's warning and re-seed) →
mirrors → flush, drain, close. ``plinius train``, :class:`plinius.torch.TorchMirror` and the
bench's overhead rows all run through it, so each of these steps exists once.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from plinius.backends.base import Backend
from plinius.backends.registry import backend_class, open_backend, parse_spec
from plinius.core.crypto import key_id, read_key_file
from plinius.core.errors import ConfigError, PliniusError
from plinius.core.fsutil import check_path
from plinius.core.model import Trainable
from plinius.enclave.counter import MirrorCounters
from plinius.enclave.platform import Platform, open_platform
from plinius.enclave.ranks import RankLink
from plinius.enclave.trusted import Enclave, check_max_in_flight
from plinius.session.owner import provision

Say = Callable[[str], None]
BackendLike = str | Backend
#: how long closing waits for the replica copies in flight
REPLICA_DRAIN_S = 60.0
#: room for a mirror's header, padding and manifest beyond its buffers when sizing a backend
MIRROR_SLACK = 64 << 10


def say_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def sizing(spec: str, mirror_bytes: int, data_bytes: int = 0) -> dict[str, str | int]:
    """Options that size a new instance of ``spec``'s backend from what it will hold (a mirror
    of ``mirror_bytes`` with room for its header and manifest, ``data_bytes`` of samples), e.g.
    a pool instead of a fixed 1 GiB; the backend class decides, an existing instance ignores
    them."""
    name, _, _ = parse_spec(spec)
    return backend_class(name).creation_options(mirror_bytes + MIRROR_SLACK, data_bytes)


@dataclass
class Replication:
    """Where sealed copies of the mirror go and how far the primary may run ahead of them."""

    specs: Sequence[BackendLike] = ()
    every: int = 1
    #: None: two copy intervals (see :mod:`plinius.enclave.replicas`)
    max_lag: int | None = None
    #: mirrors a restore from a replica may lose beyond the bound (None: refuse)
    accept_loss: int | None = None
    #: a replica that does not open is an error (True), or warned about and left out (False:
    #: ``plinius train``, whose runs outlive a replica server's outage)
    required: bool = False


@dataclass
class Resumed:
    """What :meth:`Session.restore` found."""

    iteration: int | None  # None: no mirror, a new run starts
    seconds: float
    #: set when a replica stood in for a missing primary: what was restored and lost
    lost: str | None = None
    #: seconds the re-seed mirror of the primary took (0: none was needed)
    reseed_s: float = 0.0


@dataclass
class _Replicas:
    backends: list[Backend] = field(default_factory=list)
    missing: list[tuple[str, tuple[str, str]]] = field(default_factory=list)
    unavailable: list[dict[str, Any]] = field(default_factory=list)


class Session:
    """One enclave around one model, its mirror and replicas, from the untrusted host's side.

    ``key`` or ``key_file``: the owner's data key, used only in the owner's step here (unseal or
    provision; ``owner`` runs with it too, e.g. to encrypt the embedded data set) and dropped.
    Backends given as specs are opened (sized by ``mirror_bytes``) and closed by the session;
    backend objects stay the caller's.
    """

    def __init__(
        self,
        model: Trainable,
        *,
        label: str,
        key: bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        platform: Platform | None = None,
        cfg_text: str = "",
        seed: int = 0,
        say: Say = say_stderr,
        owner: Callable[[bytes], None] | None = None,
    ) -> None:
        if (key is None) == (key_file is None):
            raise ValueError("give the owner's key or its key file, not both")
        if key_file is not None and not os.fspath(key_file):
            raise ConfigError("key file path is empty: give a file")
        self.platform = platform if platform is not None else open_platform()
        self.model = model
        self.say = say
        self.enclave = Enclave(self.platform, model, label, cfg_text, seed)
        self.provisioned = self._owner_step(key, key_file, owner)
        self.backend: Backend | None = None
        self._owned: list[Backend] = []
        self._replicas = _Replicas()
        self._closed = False

    def _owner_step(
        self,
        key: bytes | None,
        key_file: str | os.PathLike[str] | None,
        owner: Callable[[bytes], None] | None,
    ) -> bool:
        """Unseal the key this enclave sealed earlier, or attest and provision it (True)."""
        data_key = key if key is not None else read_key_file(os.fspath(key_file or ""))
        if owner is not None:
            owner(data_key)
        if self.enclave.ecall_unseal_key(key_id(data_key)):
            return False
        verifier = self.platform.owner_verifier()
        provision(self.enclave, data_key, verifier, self.model.fingerprint())
        return True

    # --- storage -----------------------------------------------------------------------------

    def adopt(self, backend: Backend) -> Backend:
        """Close ``backend`` with the session (one the caller opened for it)."""
        self._owned.append(backend)
        return backend

    def open(
        self, spec: BackendLike, *, mirror_bytes: int, data_bytes: int = 0, what: str = "backend"
    ) -> Backend:
        """A backend object as given, or the one ``spec`` names, sized by its class for a mirror
        of ``mirror_bytes`` and ``data_bytes`` of samples (closed with the session)."""
        if isinstance(spec, Backend):
            return spec
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{what} must be a backend spec string or a Backend")
        name, location, _ = parse_spec(spec)
        check_path(location, f"{what} {name} location")
        backend = open_backend(spec, **sizing(spec, mirror_bytes, data_bytes))
        self._owned.append(backend)
        return backend

    def attach(
        self,
        backend: Backend,
        *,
        replication: Replication | None = None,
        asynchronous: bool = False,
        mirror_bytes: int = 0,
        max_in_flight: int = 1,
    ) -> None:
        """Mirror into ``backend`` (its slot's freshness record), copy to the replicas.

        ``asynchronous``: snapshot, then seal and persist in the background; ``max_in_flight``
        (asynchronous only): how many snapshots may wait for their persist before a mirror
        waits (K snapshot buffers; the persists still commit one at a time, in order)."""
        check_max_in_flight(max_in_flight, asynchronous)
        self.backend = backend
        self.enclave.ecall_attach_mirror(backend, MirrorCounters(self.platform))
        if replication is not None and replication.specs:
            opened = self._open_replicas(replication, backend, mirror_bytes)
            self.enclave.ecall_attach_replicas(
                opened.backends,
                replication.every,
                self.say,
                max_lag=replication.max_lag,
                missing=opened.missing,
                accept_loss=replication.accept_loss,
            )
            self._replicas = opened  # attached: the enclave's copiers now hold them
        self.enclave.ecall_set_async(asynchronous, max_in_flight)

    def attach_ranks(
        self, link: RankLink, backend_of: Callable[[int], Backend] | None = None
    ) -> None:
        """Mirror this rank's part of a run split over ``link``'s ranks (after :meth:`attach`,
        without replicas): see :mod:`plinius.enclave.ranks`. ``backend_of(r)``: rank ``r``'s
        storage, read by a restore at another world size."""
        self.enclave.ecall_attach_ranks(link, backend_of)

    def _open_replicas(
        self, replication: Replication, primary: Backend, mirror_bytes: int
    ) -> _Replicas:
        """The replicas that open; one that does not is warned about and gets no copies, but
        its slot's record still bounds a restore and the lag. One naming the storage of the
        primary or of another replica (however spelled: the backends' slot identity) is
        refused, and so is a malformed spec (before anything is trained)."""
        got = _Replicas()
        seen = {primary.slot_parts()}
        for spec in replication.specs:
            if isinstance(spec, Backend):
                replica, parts = spec, spec.slot_parts()
            elif not isinstance(spec, str) or not spec:
                raise ConfigError("replica must be a backend spec string or a Backend")
            else:
                name, location, options = parse_spec(spec)
                parts = backend_class(name).slot_parts_of(location, options)
                try:
                    replica = self.open(spec, mirror_bytes=mirror_bytes, what="replica")
                except ConfigError:
                    raise
                except PliniusError as exc:
                    if replication.required:
                        raise
                    self.say(
                        f"warning: replica {spec} is unavailable ({exc}); training goes on "
                        "without it"
                    )
                    got.unavailable.append(
                        {"spec": spec, "ok": 0, "failed": 1, "last_error": str(exc)}
                    )
                    got.missing.append((spec, parts))
                    continue
            if replica.slot_parts() in seen:
                raise ConfigError(
                    f"--replica {replica.spec} is the same storage as the primary or another "
                    "replica: a replica must be a different backend instance"
                )
            seen.add(replica.slot_parts())
            got.backends.append(replica)
        return got

    # --- the run -------------------------------------------------------------------------------

    def restore(
        self, *, fresh: bool = False, announce: Callable[[Resumed], None] | None = None
    ) -> Resumed:
        """Load the last mirror (or, without ``fresh``, start a new run whose first mirror makes
        every older one stale). ``announce`` hears what was found before anything more is
        written: when a replica stood in for a lost primary, ``lost`` says so, and then the
        primary gets a new mirror at once so its freshness record moves on."""
        if fresh:
            self.enclave.ecall_forget_mirror()
            return Resumed(None, 0.0)
        t0 = time.perf_counter()
        iteration = self.enclave.ecall_restore(self.say)
        resumed = Resumed(iteration, time.perf_counter() - t0)
        resumed.lost = self.enclave.ecall_restore_warning()
        if announce is not None:
            announce(resumed)
        if resumed.lost is not None:
            t1 = time.perf_counter()
            self.enclave.ecall_mirror()
            self.enclave.ecall_flush()
            resumed.reseed_s = time.perf_counter() - t1
        return resumed

    def mirror(self) -> float:
        """Mirror the current state as the next version; seconds the caller waited."""
        return self.enclave.ecall_mirror()

    def flush(self) -> None:
        """Wait for every asynchronous mirror in flight (the first error is raised here)."""
        self.enclave.ecall_flush()

    def replica_report(self) -> dict[str, Any] | None:
        """Per replica: copies ok/failed/superseded, versions, bytes, seconds (with the ones
        that did not open); None without replicas."""
        report = self.enclave.ecall_replica_report()
        if report is None and not self._replicas.unavailable:
            return None
        report = report or {"replicas": []}
        report["replicas"] = list(report["replicas"]) + self._replicas.unavailable
        return report

    def drain(self, timeout: float = REPLICA_DRAIN_S) -> None:
        """Wait (at most ``timeout`` s) for the replica copies in flight; say so if one is
        still going."""
        if not self.enclave.ecall_drain_replicas(timeout):
            self.say(f"warning: a replica copy was still in flight after {timeout:.0f} s")

    def close(self) -> None:
        """Wait for the mirrors in flight and (bounded) the replica copies, then close what
        the session opened; a replica still writing is left to the process exit."""
        if self._closed:
            return
        self._closed = True
        try:
            self.enclave.ecall_flush()
            self.drain()
        finally:
            idle = self.enclave.ecall_close()
            for b in self._owned:
                if b in self._replicas.backends and b not in idle:
                    continue
                b.close()
            self._owned = []
