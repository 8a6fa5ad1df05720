"""The trusted side: one simulated enclave that trains one model and mirrors it encrypted.

Its ``ecall_*`` methods are the only way in, and they hand out nothing secret: losses, iteration
numbers, key ids, quotes. The model, the data key and every plaintext stay in this object; what
reaches a backend is ciphertext sealed here (the mirror) or sealed by the owner (the samples).
The model is anything implementing :class:`plinius.core.model.Trainable` (``nn.Network`` does): the
enclave mirrors the buffers it lists and never looks at how it lays them out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from plinius.backends.base import Backend, IoStats
from plinius.core.crypto import Engine, make_engine
from plinius.core.errors import (
    ConfigError,
    ModelMismatchError,
    NotFoundError,
    PliniusError,
    RollbackError,
)
from plinius.core.memory import aligned_empty
from plinius.core.model import Mirrorable, NamedBuffer, Trainable
from plinius.enclave.attestation import report_data_for
from plinius.enclave.channel import EphemeralKey, unwrap
from plinius.enclave.counter import (
    ID_BYTES,
    Extent,
    FreshnessGuard,
    MirrorCounters,
    Stamp,
    slot_name,
)
from plinius.enclave.measure import measurement
from plinius.enclave.platform_protocol import Platform
from plinius.enclave.ranks import RankLink, RankMirror
from plinius.enclave.replicas import Replica, Replicator, Warn
from plinius.enclave.sealing import SealedStore
from plinius.format.mirror import (
    Buffers,
    MirrorInfo,
    MirrorStore,
    OpenedMirror,
    PeekedMirror,
    Record,
    Restored,
)
from plinius.format.pmdata import LoadReport, PMData

PROVISION_AAD = b"plinius-data-key-v1"


#: each snapshot in flight holds a copy of the whole state: past this many, a bound only costs
#: memory (in steady state the loop waits for the persist whatever K is)
MAX_IN_FLIGHT = 64


def check_max_in_flight(value: object, asynchronous: bool = True) -> int:
    """``max_in_flight`` as given, when it is an int in 1..MAX_IN_FLIGHT (and > 1 only with
    asynchronous mirroring, the only mode where more than one snapshot can wait); else one
    ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_in_flight={value!r}: must be an int >= 1")
    if value > MAX_IN_FLIGHT:
        raise ConfigError(
            f"max_in_flight={value}: at most {MAX_IN_FLIGHT} (each snapshot in flight holds a "
            "copy of the whole training state)"
        )
    if value > 1 and not asynchronous:
        raise ConfigError(
            f"max_in_flight={value}: snapshots wait in flight only when mirroring is "
            "asynchronous (asynchronous=True, --async-mirror)"
        )
    return value


class SkippedPersist(PliniusError):
    """A queued asynchronous mirror not written because an earlier one failed."""


@dataclass
class _InFlight:
    """One asynchronous mirror: its snapshot buffer (by index) and its persist."""

    buffer: int
    version: int
    future: Future[IoStats]


class EnclaveStateError(PliniusError):
    """An ecall made out of order (e.g. training before a key was provisioned)."""


@dataclass
class StepResult:
    iteration: int
    loss: float
    avg_loss: float
    mirror_s: float  # time the training loop waited for the mirror (0 if none this step)


def _data_seed(seed: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 0x504C4E])  # a stream apart from the dropout one


def mirror_guard(counters: MirrorCounters, store: MirrorStore, *, settle: bool) -> FreshnessGuard:
    """The freshness guard of the slot ``store`` writes to (identity computed in one place)."""
    backend = store.backend
    slot = slot_name(*backend.slot_parts(), store.blob)
    return counters.guard(slot, store.what, settle=settle)


def _records(buffers: list[NamedBuffer]) -> list[Record]:
    return [Record(layer, name, arr) for layer, name, arr in buffers]


def buffer_map(model: Mirrorable) -> dict[tuple[int, str], np.ndarray]:
    return {(layer, name): arr for layer, name, arr in model.mirror_buffers()}


def restore_into(model: Mirrorable) -> Callable[[MirrorInfo], Buffers]:
    """Where a restore of ``model`` decrypts to, once the mirror's authenticated layout is
    known: a model with lazily created state (an optimizer's) allocates it first, through its
    optional ``prepare_restore(training_state)`` hook."""

    def into(info: MirrorInfo) -> Buffers:
        prepare = getattr(model, "prepare_restore", None)
        if prepare is not None:
            prepare(info.meta["net"])
        return buffer_map(model)

    return into


def load_buffers(store: MirrorStore, model: Mirrorable, guard: FreshnessGuard) -> Restored | None:
    """Decrypt the last mirror straight into the model's own buffers (None: no mirror)."""
    return store.load(into=restore_into(model), freshness=guard)


def open_fresh(store: MirrorStore, guard: FreshnessGuard) -> OpenedMirror:
    """The stored mirror read once, header and manifest authenticated and checked fresh.

    No mirror: refused if the platform recorded a committed one, else ``NotFoundError``."""
    opened = store.open(freshness=guard)
    if opened is None:
        guard.absent()
        raise NotFoundError(f"no mirror in {store.backend.spec}")
    return opened


def _save_begun(
    store: MirrorStore,
    counters: MirrorCounters,
    slot: str,
    stamp: Stamp,
    extent: list[Extent],
    records: list[Record],
    iteration: int,
    meta: dict[str, Any],
    engine: Engine | None,
) -> IoStats:
    """``store.save`` of ``stamp``'s mirror with the slot's record of it in flight before
    anything is written (its extent appended to ``extent``); the caller commits the record."""

    def begin(e: Extent) -> None:
        counters.begin(slot, stamp, e)
        extent.append(e)

    return store.save(
        records,
        version=stamp.version,
        iteration=iteration,
        meta=meta,
        run_id=stamp.run_id,
        save_id=stamp.save_id,
        before_write=lambda size, manifest: begin(Extent(size, manifest)),
        engine=engine,
    )


#: builds a model from a mirror read and checked fresh: (the model, restored; the mirror's info)
ModelBuilder = Callable[[OpenedMirror], tuple[Trainable, MirrorInfo]]


class Enclave:
    """A simulated SGX enclave around one model (:class:`~plinius.core.model.Trainable`)."""

    def __init__(
        self,
        platform: Platform,
        model: Trainable | None,
        model_label: str = "",
        cfg_text: str = "",
        seed: int = 0,
        fingerprint: bytes | None = None,
    ) -> None:
        """``model=None`` with a ``fingerprint``: the model comes from the mirror (inference)."""
        if model is not None:
            fingerprint = model.fingerprint()
        if fingerprint is None:
            raise ValueError("an enclave needs a model or a model fingerprint")
        self._fp = fingerprint
        self.measurement = measurement(self._fp)
        self._platform = platform
        self._sealed = SealedStore(platform, self.measurement)
        self._model_label = model_label
        self._cfg_text = cfg_text
        self._seed = seed
        self._engine: Engine | None = None
        self._async_engine: Engine | None = None  # the background seal's (see _use_key)
        self._channel: EphemeralKey | None = None
        self._quote: bytes = b""
        self._data_rng = np.random.Generator(np.random.PCG64(_data_seed(seed)))
        self._batches_drawn = 0
        self._train: PMData | None = None
        self._store: MirrorStore | None = None
        self._guard: FreshnessGuard | None = None  # the slot's freshness record (settling)
        self._run_id = os.urandom(ID_BYTES)
        self._version = 0
        self._model_or_none = model
        self._x = np.empty((0, 0), np.float32)
        self._y = np.empty((0, 0), np.float32)
        self._dataset_id: bytes | None = None
        self._async: ThreadPoolExecutor | None = None
        #: asynchronous mirrors not known to be finished, oldest first (at most max_in_flight)
        self._in_flight: deque[_InFlight] = deque()
        self._max_in_flight = 1
        self._snapshots: list[np.ndarray] = []  # one buffer per mirror that may be in flight
        self._free: list[int] = []  # indices of the snapshot buffers no mirror holds
        #: set by the background thread when a persist failed: the queued ones are skipped
        self._broken = threading.Event()
        self._replicas: Replicator | None = None
        self._accept_loss: int | None = None  # mirrors a replica restore may lose beyond the bound
        self._reseed = False  # the next mirror re-seeds a lost primary from a replica's content
        self._restore_warning: str | None = None  # set when a replica replaced a lost primary
        self._ranks: RankMirror | None = None  # this rank's part of a run split over ranks
        self._backend_of: Callable[[int], Backend] | None = None  # other ranks' storage

    # --- attestation and provisioning ------------------------------------------------------

    def ecall_attest(self) -> tuple[bytes, bytes]:
        """A quote over this enclave's measurement binding a fresh channel key; and that key."""
        self._channel = EphemeralKey()
        self._quote = self._platform.attest(self.measurement, report_data_for(self._channel.public))
        return self._quote, self._channel.public

    def ecall_provision(self, owner_public: bytes, wrapped_key: bytes) -> bytes:
        """Receive the data key over the attested channel, seal it, return its public id."""
        if self._channel is None:
            raise EnclaveStateError("provisioning needs a fresh attestation first (ecall_attest)")
        transcript = self._quote + owner_public + self._channel.public
        chan_key = self._channel.channel_key(owner_public, transcript)
        self._channel = None  # one provisioning per attestation
        key = unwrap(chan_key, wrapped_key, PROVISION_AAD + self.measurement, "provisioned key")
        engine = make_engine(key)
        self._sealed.put(self._key_label(engine.key_id), key)
        self._use_key(key, engine)
        return engine.key_id

    def _use_key(self, key: bytes, engine: Engine) -> None:
        """The data key's engines: ``engine`` for everything, and the one measured least costly
        in CPU for the background seal of asynchronous mirrors (it shares the cores with
        training; :func:`plinius.core.crypto.make_engine` ``mode="async"``)."""
        self._engine = engine
        self._async_engine = make_engine(key, mode="async")

    def _key_label(self, key_id: bytes) -> str:
        # one sealed copy per (enclave, key): another model's enclave provisions its own
        return f"datakey-{self.measurement[:8].hex()}-{key_id.hex()}"

    def ecall_unseal_key(self, key_id: bytes) -> bool:
        """Reuse a key sealed by this same enclave earlier (restart after a crash)."""
        key = self._sealed.get(self._key_label(key_id))
        if key is None:
            return False
        self._use_key(key, make_engine(key))
        return True

    @property
    def _model(self) -> Trainable:
        if self._model_or_none is None:
            raise EnclaveStateError("no model yet: build it from the mirror first")
        return self._model_or_none

    def ecall_model_from_mirror(self, build: ModelBuilder) -> tuple[str, int]:
        """Build the model the attached mirror describes (its sealed configuration, read once,
        authenticated and checked fresh before ``build`` parses it) and restore it. ``build``
        is the model implementation's (e.g. :func:`plinius.nn.mirrored.network_from_opened`):
        the enclave knows models only through the protocol."""
        if self._store is None or self._guard is None:
            raise EnclaveStateError("attach a mirror first")
        net, info = build(open_fresh(self._store, replace(self._guard, settle=False)))
        meta = info.meta
        self._model_or_none = net
        self._model_label, self._cfg_text = str(meta["model"]), str(meta["cfg"])
        self._dataset_id = bytes.fromhex(meta["dataset_id"]) if meta.get("dataset_id") else None
        return self._model_label, info.iteration

    @property
    def _eng(self) -> Engine:
        if self._engine is None:
            raise EnclaveStateError("no data key: provision one (owner attestation) first")
        return self._engine

    @property
    def engine_name(self) -> str:
        return self._eng.name

    # --- data ------------------------------------------------------------------------------

    def ecall_load_data(self, backend: Backend, dataset_path: str | os.PathLike[str]) -> LoadReport:
        """PM-data: put the owner's sealed samples into the backend unless already there."""
        areas, report = PMData.ensure_loaded(backend, self._eng, dataset_path, ("train", "test"))
        train = areas["train"]
        if train.info.features != self._model.inputs or train.info.classes != self._model.outputs:
            raise ModelMismatchError(
                f"dataset {train.info.name} has {train.info.features} inputs and "
                f"{train.info.classes} classes; model {self._model_label} wants "
                f"{self._model.inputs} and {self._model.outputs}"
            )
        if len(train) == 0:
            raise ConfigError(f"dataset {train.info.name} has no training samples")
        self._train = train
        return report

    # --- mirror ----------------------------------------------------------------------------

    def ecall_attach_mirror(self, backend: Backend, counters: MirrorCounters) -> None:
        """Bind the mirror store and the platform's freshness record of its slot."""
        self._store = MirrorStore(backend, self._eng, self._fp)
        self._guard = mirror_guard(counters, self._store, settle=True)
        state = counters.read(self._guard.slot)
        self._version = state.high if state else 0

    def ecall_attach_ranks(
        self, link: RankLink, backend_of: Callable[[int], Backend] | None = None
    ) -> RankMirror:
        """Mirror this rank's part of a run split over ``link``'s ranks (after
        :meth:`ecall_attach_mirror`): parts, the rank's slot record, the global manifest and the
        two-phase commit of :mod:`plinius.enclave.ranks`. ``backend_of(r)``: rank ``r``'s storage,
        read by a restore at another world size. Replicas are not supported with it."""
        if self._store is None or self._guard is None:
            raise EnclaveStateError("attach a mirror first")
        if self._replicas is not None:
            raise ConfigError("replicas of a mirror split over ranks are not supported")
        ranks = RankMirror(link, self._store.backend, self._eng, self._fp, self._guard.counters)
        self._ranks, self._backend_of = ranks, backend_of
        self._guard = ranks.guard(settle=True)
        self._new_run()
        state = ranks.counters.read(ranks.slot)
        self._version = state.high if state else 0
        self._agree_version()
        return ranks

    def _agree_version(self) -> None:
        """Every rank numbers the next save alike: above the highest version any rank's record
        issued (a rank that began a save the others never reached has burnt one more)."""
        assert self._ranks is not None
        got = self._ranks.link.all_gather_bytes(str(self._version).encode(), 32)
        try:
            self._version = max(int(v) for v in got)
        except ValueError:
            raise EnclaveStateError("a rank sent no version") from None

    def _meta(self) -> dict[str, Any]:
        """The manifest's metadata: the model's training state ("net", the key of format 2),
        the enclave's data cursor, and what rebuilds the model from the mirror alone."""
        return {
            "net": self._model.training_state(),
            "data_rng": self._data_rng.bit_generator.state,
            "batches_drawn": self._batches_drawn,
            "dataset_id": self._train.info.dataset_id.hex() if self._train else None,
            "model": self._model_label,
            "cfg": self._cfg_text,
            "seed": self._seed,
            "batch": self._model.batch,
        }

    def ecall_attach_replicas(
        self,
        backends: list[Backend],
        every: int,
        warn: Warn,
        *,
        max_lag: int | None = None,
        missing: list[tuple[str, tuple[str, str]]] | None = None,
        accept_loss: int | None = None,
    ) -> None:
        """Copy every ``every``-th mirror, as sealed, to each backend (a slot of its own each),
        keeping the primary at most ``max_lag`` versions ahead of the newest copy.

        ``missing``: (spec, slot parts) of configured replicas that did not open (their slots'
        records still bound a restore); ``accept_loss``: how many mirrors the user accepts to
        lose when a replica must stand in below that bound. Versions continue above every
        slot's record, so each replica's slot accepts them."""
        if self._store is None or self._guard is None:
            raise EnclaveStateError("attach a mirror first")
        counters = self._guard.counters
        self._replicas = Replicator(
            backends, counters, self._store.blob, every, warn, max_lag=max_lag, missing=missing
        )
        self._accept_loss = accept_loss
        for _, slot in self._replicas.slots:
            state = counters.read(slot)
            self._version = max(self._version, state.high if state else 0)

    def ecall_drain_replicas(self, timeout: float) -> bool:
        """Wait (bounded) for the replica copies in flight; False if some are still going."""
        return self._replicas.drain(timeout) if self._replicas is not None else True

    def ecall_replica_report(self) -> dict[str, Any] | None:
        return self._replicas.report() if self._replicas is not None else None

    def ecall_restore_warning(self) -> str | None:
        """Set by a restore from a replica: what was lost; the caller then mirrors at once."""
        return self._restore_warning

    def _replica_store(self, r: Replica) -> MirrorStore:
        return MirrorStore(r.backend, self._eng, self._fp, r.blob)

    def _newest_replica(
        self, warn: Warn, run: bytes, high: int
    ) -> tuple[Replica, PeekedMirror] | None:
        """The replica holding the newest mirror of the primary's recorded ``run`` (a version
        the primary's record has seen: ``<= high``) that authenticates and is fresh by its own
        slot's record (settled to what it holds, as a restore does), with its header and
        manifest as authenticated (the restore reads its records under them, without
        authenticating them again). A replica that fails any check, or holds another run's
        mirror (a shared or abandoned replica), is named and skipped."""
        best: tuple[Replica, PeekedMirror] | None = None
        assert self._replicas is not None
        for r in self._replicas.replicas:
            store = self._replica_store(r)
            try:
                peeked = store.peeked(freshness=r.guard(store.what, settle=True))
            except PliniusError as exc:
                r.stats.last_error = str(exc)
                warn(f"warning: replica {r.backend.spec} not usable for restore: {exc}")
                continue
            if peeked is None:
                continue
            info = peeked.info
            if info.run_id != run or info.version > high:
                warn(
                    f"warning: replica {r.backend.spec} holds a mirror of another run (version "
                    f"{info.version}), not of the run recorded for the primary: not used"
                )
                continue
            if best is None or info.version > best[1].info.version:
                best = (r, peeked)
        return best

    def _restore_replicated(self, warn: Warn) -> Restored | None:
        """The primary's mirror when it is there (its own errors — tampering, rollback — stop
        as without replicas); only a *missing* primary mirror gives way to a replica, and only to
        the newest copy of the run the platform recorded for the primary, never below the
        newest copy any configured replica slot recorded (reachable or not) and never more than
        the lag bound below the primary's record, unless the user accepted that loss. Each
        mirror's header and manifest are authenticated once: the chosen replica's records are
        read under what its peek authenticated."""
        assert self._store is not None and self._guard is not None
        assert self._replicas is not None
        guard = self._guard
        into = restore_into(self._model)
        primary = self._store.load(into, freshness=guard)
        if primary is not None:
            return primary
        state = guard.counters.read(guard.slot)
        run = state.current_run if state is not None else None
        if state is None or run is None:
            return None  # nothing was ever mirrored here: a replica's content is not this run's
        best = self._newest_replica(warn, run, state.high)
        if best is None:
            try:
                guard.absent()
            except RollbackError as exc:
                have = "no replica holds a usable mirror of this run"
                raise RollbackError(f"{exc}; {have}") from None
            return None
        r, peeked = best
        info = peeked.info
        last = state.committed.version if state.committed else None
        lost = max(0, last - info.version) if last is not None else 0
        floor = self._replicas.newest(run)
        below_floor = floor is not None and info.version < floor[0]
        bound = self._replicas.max_lag
        accepted = self._accept_loss is not None and lost <= self._accept_loss
        if (below_floor or lost > bound) and not accepted:
            why = (
                f"version {floor[0]} was committed on replica {floor[1]} (bring it back)"
                if below_floor and floor is not None
                else f"that is more than --replica-max-lag {bound}"
            )
            raise RollbackError(
                f"primary mirror at {self._store.backend.spec} is missing; the platform "
                f"recorded version {last} there, the newest usable replica copy is version "
                f"{info.version} on {r.backend.spec}, {lost} mirrors older, and {why}: "
                f"refusing the rollback (accept exactly this loss with --accept-replica-loss "
                f"{lost}, or start over with --fresh)"
            )
        got = peeked.store.load(into, peeked=peeked)
        assert got is not None  # a peeked mirror is there (or its read raises)
        self._reseed = True
        self._restore_warning = (
            f"warning: primary mirror at {self._store.backend.spec} is missing: restored version "
            f"{info.version} from replica {r.backend.spec}; "
            f"{lost if last is not None else 'no'} mirrors since then are lost"
            + (" (accepted with --accept-replica-loss)" if below_floor or lost > bound else "")
        )
        return got

    def ecall_restore(self, warn: Warn | None = None) -> int | None:
        """Restore model, optimizer, RNGs and data cursor from the last mirror; its iteration.

        With replicas attached, the newest fresh mirror among primary and replicas."""
        if self._store is None or self._guard is None:
            raise EnclaveStateError("attach a mirror first")
        guard = self._guard
        if self._ranks is not None:
            return self._restore_ranks(self._ranks)
        if self._replicas is not None and self._replicas.replicas:
            got = self._restore_replicated(warn or (lambda m: None))
        else:
            got = load_buffers(self._store, self._model, guard)
        if got is None:
            guard.absent()
            return None
        meta = got.info.meta
        if self._train is not None and meta.get("dataset_id") not in (
            None,
            self._train.info.dataset_id.hex(),
        ):
            raise ModelMismatchError(
                "the mirror was trained on another dataset "
                f"({meta.get('dataset_id')}); use that dataset or --fresh"
            )
        self._model.load_training_state(meta["net"])
        self._resume(meta, got.info.version, got.info.run_id)
        return self._model.iteration

    def _resume(self, meta: dict[str, Any], version: int, run_id: bytes) -> None:
        self._data_rng.bit_generator.state = meta["data_rng"]
        self._batches_drawn = int(meta["batches_drawn"])
        self._version = max(self._version, version)
        self._run_id = run_id  # the run goes on

    def _restore_ranks(self, ranks: RankMirror) -> int | None:
        """The save every rank's record accepts, as the global manifest lists it: this rank's
        part straight into the model; at another world size, the parts this rank reads (rank
        ``r`` by rank ``r % world``) handed to the model's ``reshard`` hook, which exchanges
        what each rank needs over the ranks' collectives."""
        g = ranks.read_global()
        ranks.unsure = False  # the manifest read is the one a new save must not overwrite
        if g is None:
            ranks.absent()
            self._agree_version()
            return None
        link = ranks.link
        if g.world == link.world:
            got = ranks.load_own(g, restore_into(self._model))
            ranks.live = g.parts[link.rank].blob
            self._model.load_training_state(got.info.meta["net"])
            self._resume(got.info.meta, g.version, g.run_id)
            self._agree_version()
            return self._model.iteration
        reshard = getattr(self._model, "reshard", None)
        if reshard is None or self._backend_of is None:
            raise ConfigError(
                f"the mirror was saved by {g.world} ranks and this run has {link.world}: this "
                "model cannot be resharded"
            )
        backend_of = self._backend_of
        mine = [r for r in range(g.world) if r % link.world == link.rank]
        parts = ranks.load_parts(
            g, mine, lambda r: ranks.backend if r == link.rank else backend_of(r)
        )
        source = reshard(g, {r: got.info.meta["net"] for r, got in parts.items()},
                         {r: got.arrays for r, got in parts.items()})  # fmt: skip
        for r in mine:
            b = ranks.backend if r == link.rank else backend_of(r)
            ranks.counters.check(
                ranks.part_guard(g, r, b).inner.slot, f"rank {r}'s part", g.stamp_of(r),
                settle=True,
            )  # fmt: skip
        if link.rank < g.world:  # this rank's own old part stays listed until a new save
            ranks.live = g.parts[link.rank].blob
        meta = parts[source].info.meta if source in parts else None
        if meta is not None:
            self._resume(meta, g.version, g.run_id)
        else:
            self._version, self._run_id = max(self._version, g.version), g.run_id
        self._agree_version()
        return self._model.iteration

    def ecall_forget_mirror(self) -> None:
        """``--fresh``: a new run from scratch; its first mirror makes every older one stale."""
        self._new_run()

    def _new_run(self) -> None:
        """A new run id: random; rank 0's on every rank of a run split over ranks."""
        self._run_id = os.urandom(ID_BYTES)
        if self._ranks is not None:
            link = self._ranks.link
            got = link.broadcast_bytes(self._run_id if link.rank == 0 else None, ID_BYTES)
            if len(got) != ID_BYTES:
                raise EnclaveStateError("rank 0 sent no run id")
            self._run_id = got

    def ecall_explain_mismatch(self) -> str | None:
        """What differs between this model and the one the stored mirror was made by, when the
        model can say (its optional ``describe_mismatch(training_state)``): the manifest is
        authenticated under the fingerprint its own header names and checked fresh for this slot;
        only the explanation leaves. None: nothing to explain by (no mirror, no such hook, an
        unreadable or stale mirror)."""
        describe = getattr(self._model_or_none, "describe_mismatch", None)
        if describe is None or self._store is None or self._guard is None:
            return None
        # only the slot's own fresh mirror (committed, or the one save in flight) is described:
        # a mirror copied in from another slot or run of this owner says nothing of itself
        fresh = replace(self._guard, settle=False)
        try:
            store = MirrorStore(self._store.backend, self._eng, None, self._store.blob)
            info = store.peek(freshness=fresh)
        except PliniusError:
            return None
        net = info.meta.get("net") if info is not None else None
        return str(describe(net)) if isinstance(net, dict) else None

    def _persist(
        self,
        records: list[Record],
        version: int,
        iteration: int,
        meta: dict[str, Any],
        engine: Engine | None = None,
    ) -> IoStats:
        assert self._store is not None and self._guard is not None
        counters, slot = self._guard.counters, self._guard.slot
        stamp = Stamp(self._run_id, version, os.urandom(ID_BYTES))
        if self._ranks is not None:
            return self._persist_part(records, stamp, iteration, meta, engine)
        reseed, self._reseed = self._reseed, False
        if self._replicas is not None and not reseed:  # a re-seed holds a replica's content
            self._replicas.before_commit(
                self._store.backend, stamp.run_id, version, lambda: self._committed(slot)
            )
        extent: list[Extent] = []
        stats = _save_begun(self._store, counters, slot, stamp, extent, records, iteration, meta,
                            engine)  # fmt: skip
        counters.commit(slot, stamp)
        if self._replicas is not None and extent:
            self._replicas.after_commit(self._store.backend, stamp, extent[0], force=reseed)
        return stats

    def _persist_part(
        self,
        records: list[Record],
        stamp: Stamp,
        iteration: int,
        meta: dict[str, Any],
        engine: Engine | None,
    ) -> IoStats:
        """This rank's part of save ``stamp.version``, committed only once every rank's part
        and the global manifest listing them are durable (:meth:`RankMirror.commit`)."""
        ranks = self._ranks
        assert ranks is not None
        table = meta["net"].get("table", [])
        blob = ranks.next_blob()
        extent: list[Extent] = []
        try:
            stats = _save_begun(ranks.stores[blob], ranks.counters, ranks.slot, stamp, extent,
                                records, iteration, meta, engine)  # fmt: skip
        except Exception as exc:  # every rank must hear of it before any raises
            ranks.commit(stamp, None, iteration, exc, table, blob)  # the others learn it; raises
            raise
        ranks.commit(stamp, extent[0], iteration, None, table, blob)
        ranks.live = blob  # the global manifest now lists it, whatever happens next
        ranks.counters.commit(ranks.slot, stamp)
        return stats

    def _committed(self, slot: str) -> tuple[Stamp, Extent | None] | None:
        """The primary's committed stamp and extent, as the platform recorded them."""
        assert self._guard is not None
        state = self._guard.counters.read(slot)
        if state is None or state.committed is None:
            return None
        return state.committed, state.committed_extent

    def ecall_set_async(self, enabled: bool, max_in_flight: int = 1) -> None:
        """Asynchronous mirroring: snapshot here, seal and persist in a background thread.

        ``max_in_flight`` (K): how many snapshots may wait for their persist. K page-aligned
        snapshot buffers are allocated here, once, and reused; the persists run one after
        another on one thread (the slot's freshness record holds one save in flight), so
        mirrors commit in version order, and a mirror waits only when K are pending."""
        k = check_max_in_flight(max_in_flight, enabled)
        if enabled and self._async is not None and k == self._max_in_flight:
            return
        if self._async is not None:
            try:
                self.ecall_flush()
            finally:
                self._async.shutdown()
                self._async = None
                self._snapshots, self._free = [], []
        if enabled:
            nbytes = self._model.snapshot_nbytes()
            self._snapshots = [aligned_empty(nbytes) for _ in range(k)]
            self._free = list(range(k))
            self._max_in_flight = k
            self._async = ThreadPoolExecutor(1, thread_name_prefix="plinius-mirror")

    def ecall_flush(self) -> None:
        """Wait for every asynchronous mirror in flight (the first error surfaces here)."""
        while self._in_flight:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        """Wait for the oldest mirror in flight and free its buffer. If it failed, every mirror
        queued after it is dropped unwritten (none commits after a failed one) and its error
        raised."""
        oldest = self._in_flight[0]
        error = oldest.future.exception()
        self._in_flight.popleft()
        self._free.append(oldest.buffer)
        if error is None:
            return
        while self._in_flight:  # skipped (the background thread saw the failure), or unstarted
            later = self._in_flight.popleft()
            later.future.cancel()
            with contextlib.suppress(BaseException):
                later.future.exception()
            self._free.append(later.buffer)
        self._broken.clear()  # every queued mirror is accounted for: the next ones may run
        raise error

    def _surface_errors(self) -> None:
        """Free the buffers of the mirrors already finished, oldest first; raise the first
        error of any of them (dropping the mirrors queued after it)."""
        while self._in_flight and self._in_flight[0].future.done():
            self._finish_oldest()

    def _persist_queued(
        self, records: list[Record], version: int, iteration: int, meta: dict[str, Any]
    ) -> IoStats:
        """The background thread's persist of one snapshot; none after one failed."""
        if self._broken.is_set():
            raise SkippedPersist(f"mirror version {version} not written: an earlier one failed")
        try:
            return self._persist(records, version, iteration, meta, self._async_engine)
        except BaseException:
            self._broken.set()
            raise

    def ecall_mirror(self) -> float:
        """Mirror the current state as the next version; seconds the caller waited
        (asynchronous: for the snapshot, and for the oldest mirror when K are in flight)."""
        if self._store is None:
            raise EnclaveStateError("attach a mirror first")
        t0 = time.perf_counter()
        if self._async is not None:
            self._surface_errors()  # a failed mirror stops here, before a newer one is queued
            while len(self._in_flight) >= self._max_in_flight:
                self._finish_oldest()  # the bound: wait for the oldest to commit
        self._version += 1
        meta = self._meta()
        it = self._model.iteration
        if self._async is None:
            self._persist(_records(self._model.mirror_buffers()), self._version, it, meta)
            return time.perf_counter() - t0
        buffer = self._free.pop()
        try:
            snap = _records(self._model.snapshot_into(self._snapshots[buffer]))
            future = self._async.submit(self._persist_queued, snap, self._version, it, meta)
        except BaseException:
            self._free.append(buffer)
            raise
        self._in_flight.append(_InFlight(buffer, self._version, future))
        return time.perf_counter() - t0

    def ecall_in_flight(self) -> int:
        """Asynchronous mirrors not yet known to be finished (each holds a snapshot buffer)."""
        return len(self._in_flight)

    # --- training --------------------------------------------------------------------------

    def ecall_train_step(self, mirror: bool) -> StepResult:
        """One iteration on a random batch read from the backend and decrypted only here;
        optionally mirror."""
        if self._train is None:
            raise EnclaveStateError("load the training data first")
        model = self._model
        if self._x.shape[0] != model.batch:
            self._x = np.empty((model.batch, model.inputs), np.float32)
            self._y = np.empty((model.batch, model.outputs), np.float32)
        idx = self._data_rng.integers(0, len(self._train), model.batch)
        self._batches_drawn += 1
        self._train.read_batch(idx, self._x, self._y)
        loss = model.train_step(self._x, self._y)
        waited = self.ecall_mirror() if mirror else 0.0
        return StepResult(model.iteration, loss, model.avg_loss, waited)

    def ecall_iteration(self) -> int:
        return self._model.iteration

    def ecall_weights_digest(self) -> str:
        """SHA-256 of parameters and optimizer state: equal digests mean bit-identical models."""
        h = hashlib.sha256()
        for _, _, arr in self._model.mirror_buffers():
            h.update(arr.tobytes())
        return h.hexdigest()

    def ecall_infer(self, backend: Backend, split: str = "test") -> tuple[float, int]:
        """Top-1 accuracy over a split stored in the backend; the model never leaves."""
        dataset_id = self._train.info.dataset_id if self._train else self._dataset_id
        if dataset_id is None:
            raise EnclaveStateError("no dataset: load the data or restore a mirror first")
        data = PMData.stored(backend, self._eng, dataset_id, split)
        n = len(data)
        if n == 0:
            raise ConfigError(f"dataset {data.info.name} has no {split} samples")
        correct = 0
        batch = 256
        x = np.empty((batch, data.info.features), np.float32)
        y = np.empty((batch, data.info.classes), np.float32)
        for start in range(0, n, batch):
            idx = np.arange(start, min(n, start + batch))
            data.read_batch(idx, x, y)
            pred = np.argmax(self._model.predict(x[: len(idx)]), axis=1)
            correct += int(np.sum(pred == np.argmax(y[: len(idx)], axis=1)))
        return correct / n, n

    def ecall_close(self) -> list[Backend]:
        """Stop mirroring; the replica backends now idle (the caller closes them)."""
        self.ecall_set_async(False)
        idle = self._replicas.close() if self._replicas is not None else []
        if self._guard is not None:
            self._guard.counters.close()  # a replica copy still going opens its record again
        return idle
