"""One training run's mirror split over ranks: a part per rank, one global manifest, and the
two-phase commit that makes a save all-or-nothing across ranks (layout in ``docs/FORMAT.md``).

Save ``S``, on every rank::

    begin(S) on the rank's slot record; seal and write the rank's part (blob parity S % 2, so
    part S-1 stays whole until S is committed everywhere)
    all-gather the ranks' reports (stamp, extent, plan digest, or the error that stopped it)
    rank 0: seal the global manifest (world, every rank's stamp and extent, the tensor table)
            under the run's key and write it atomically; broadcast it
    every rank authenticates it and finds its own stamp in it; then commit(S) on its record

Restore: rank 0 reads the global manifest, every rank authenticates it, opens exactly the part
it lists for the rank (stamp and extent, before anything is allocated) and checks that part
against its own platform record (the committed save, or the one in flight); the verdicts are
all-gathered and one refusal anywhere refuses on every rank, naming the rank. A rank commits S
only after the global manifest of S is durable, so a kill anywhere leaves every record at S or
S-1 and the global manifest at the one they all accept.

The ranks' collectives carry only stamps, sizes, digests and the sealed manifest; the host
moves them (:class:`RankLink`) and every enclave checks what it receives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from plinius.backends.base import Backend
from plinius.core import errors as _errors
from plinius.core.crypto import OVERHEAD, Engine, check_key_matches
from plinius.core.errors import FormatError, IntegrityError, PliniusError, RollbackError
from plinius.enclave.counter import Extent, FreshnessGuard, MirrorCounters, Stamp, slot_name
from plinius.format.mirror import ID_BYTES, MirrorInfo, MirrorStore, Record, Restored

GLOBAL_MAGIC = b"PLNGLOB\x00"
GLOBAL_FORMAT = 1
# magic, format, header size, key id, version, run id, sealed body length
_GHEAD = struct.Struct(f"<8sHH8sQ{ID_BYTES}sI")
_GLOBAL_AAD = b"plinius-global-v1"
#: the largest global manifest read or received (a table of ~400,000 tensors)
MAX_GLOBAL = 64 << 20
#: the largest report or verdict one rank sends the others
MAX_REPORT = 64 << 10
#: the largest broadcast of a global manifest: a tag byte, the header, the sealed body
_MESSAGE = 1 + _GHEAD.size + MAX_GLOBAL
DEFAULT_BASE = "mirror"


class RankLink(Protocol):
    """The host's collectives between the ranks' enclaves (a process group of its own)."""

    rank: int
    world: int

    def all_gather_bytes(self, data: bytes, limit: int) -> list[bytes]:
        """Every rank's ``data`` (each at most ``limit`` bytes), in rank order."""

    def broadcast_bytes(self, data: bytes | None, limit: int, src: int = 0) -> bytes:
        """``src``'s ``data`` on every rank (at most ``limit`` bytes)."""


class DistributedSaveError(PliniusError):
    """A save a rank could not make: no rank committed it."""


def part_blob(base: str, rank: int, which: int) -> str:
    """Rank ``rank``'s part blob ``which`` (0 or 1): a save writes the one the global
    manifest does not list, so the listed part stays whole until the new save is committed."""
    return f"{base}.r{rank}.{which}"


def part_slot(backend: Backend, base: str, rank: int) -> str:
    """The freshness slot of rank ``rank``'s parts (both blobs: one record per rank)."""
    return slot_name(*backend.slot_parts(), f"{base}.r{rank}")


def global_blob(base: str) -> str:
    return f"{base}.global"


@dataclass(frozen=True)
class PartEntry:
    """What the global manifest says of one rank's part."""

    rank: int
    save_id: bytes
    size: int
    manifest: int
    #: which of the rank's two part blobs holds it
    blob: int


@dataclass(frozen=True)
class GlobalManifest:
    """One save across ranks, authenticated with the run's key."""

    version: int
    run_id: bytes
    iteration: int
    world: int
    parts: tuple[PartEntry, ...]
    #: the tensor table (:mod:`plinius.torch.shards`): who holds which tensor, which rows
    table: list[Any]

    def stamp_of(self, rank: int) -> Stamp:
        return Stamp(self.run_id, self.version, self.parts[rank].save_id)

    def extent_of(self, rank: int) -> Extent:
        p = self.parts[rank]
        return Extent(p.size, p.manifest)

    def doc(self) -> dict[str, Any]:
        return {
            "format": GLOBAL_FORMAT,
            "version": self.version,
            "run": self.run_id.hex(),
            "iteration": self.iteration,
            "world": self.world,
            "parts": [[p.rank, p.save_id.hex(), p.size, p.manifest, p.blob] for p in self.parts],
            "table": self.table,
        }


def _aad(fingerprint: bytes, header: bytes) -> bytes:
    return _GLOBAL_AAD + fingerprint + header


def seal_global(engine: Engine, fingerprint: bytes, g: GlobalManifest) -> bytes:
    """The global manifest as stored: plaintext header, sealed JSON bound to it."""
    body = json.dumps(g.doc(), separators=(",", ":")).encode()
    header = _GHEAD.pack(
        GLOBAL_MAGIC, GLOBAL_FORMAT, _GHEAD.size, engine.key_id, g.version, g.run_id,
        len(body) + OVERHEAD,
    )  # fmt: skip
    out = bytearray(len(header) + len(body) + OVERHEAD)
    out[: len(header)] = header
    engine.encrypt_into(_aad(fingerprint, header), body, memoryview(out)[len(header) :])
    return bytes(out)


def global_size(head: bytes, what: str) -> int:
    """The stored size a global manifest's header claims, refused past :data:`MAX_GLOBAL`."""
    if len(head) < _GHEAD.size:
        raise FormatError(f"{what} is cut short ({len(head)} B)")
    magic, fmt, hsize, _, _, _, sealed = _GHEAD.unpack(head[: _GHEAD.size])
    if magic != GLOBAL_MAGIC:
        raise FormatError(f"{what} is not a plinius global manifest")
    if fmt != GLOBAL_FORMAT or hsize != _GHEAD.size:
        raise FormatError(f"{what} has format {fmt}; this plinius reads {GLOBAL_FORMAT}")
    if not OVERHEAD < sealed <= MAX_GLOBAL:
        raise FormatError(f"{what} claims a {sealed} B body; refused (at most {MAX_GLOBAL} B)")
    return _GHEAD.size + int(sealed)


def open_global(engine: Engine, fingerprint: bytes, data: bytes, what: str) -> GlobalManifest:
    """Authenticate a stored global manifest; refuse anything malformed with one line."""
    size = global_size(data, what)
    if len(data) != size:
        raise FormatError(f"{what} is {len(data)} B, its header says {size} B")
    header = data[: _GHEAD.size]
    _, _, _, kid, version, run_id, sealed = _GHEAD.unpack(header)
    check_key_matches(what, kid, engine)
    body = bytearray(sealed - OVERHEAD)
    engine.decrypt_into(_aad(fingerprint, header), data[_GHEAD.size :], memoryview(body), what)
    try:
        doc = json.loads(body)
        parts = tuple(
            PartEntry(int(r), bytes.fromhex(s), int(n), int(m), int(b))
            for r, s, n, m, b in doc["parts"]
        )
        g = GlobalManifest(
            int(doc["version"]), bytes.fromhex(doc["run"]), int(doc["iteration"]),
            int(doc["world"]), parts, list(doc["table"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{what}: malformed body ({exc})") from None
    if (g.version, g.run_id) != (version, run_id) or doc.get("format") != GLOBAL_FORMAT:
        raise IntegrityError(f"{what}: body and header disagree")
    if any(p.blob not in (0, 1) for p in parts):
        raise FormatError(f"{what}: a part blob other than 0 or 1")
    if not 1 <= g.world == len(parts) or [p.rank for p in parts] != list(range(g.world)):
        raise FormatError(f"{what}: {len(parts)} parts for a world of {g.world}")
    return g


@dataclass
class PartGuard:
    """The rank's freshness guard, also holding the part to the stamp and extent the global
    manifest lists for it (checked before anything the header claims is allocated)."""

    inner: FreshnessGuard
    expected: Stamp
    extent: Extent
    rank: int

    def _same(self, found: Stamp, extent: Extent | None) -> None:
        if found != self.expected or (extent is not None and extent != self.extent):
            e = self.expected
            if found.run_id != e.run_id:
                why = "the part and the global manifest belong to different runs"
            elif found.version < e.version:
                why = "an older part replayed"
            else:
                why = "a part of another save or rank (parts swapped or mixed)"

            raise RollbackError(
                f"rank {self.rank}: its part holds {found.short()}, the global manifest lists "
                f"{e.short()} ({why}); refused"
            )

    def recorded_sizes(self) -> tuple[int, ...]:
        return (self.extent.size,)

    def admit(self, run_id: bytes, version: int, save_id: bytes, size: int, manifest: int) -> bool:
        self._same(Stamp(run_id, version, save_id), Extent(size, manifest))
        return self.inner.admit(run_id, version, save_id, size, manifest)

    def __call__(self, info: MirrorInfo) -> None:
        self._same(Stamp(info.run_id, info.version, info.save_id), None)
        self.inner(info)


# --- verdicts across ranks -----------------------------------------------------------------------


def _verdict(exc: BaseException | None) -> bytes:
    if exc is None:
        return b"ok"
    kind = type(exc).__name__ if isinstance(exc, PliniusError) else "PliniusError"
    return json.dumps([kind, str(exc)]).encode()[: MAX_REPORT - 64]


def _error(name: str, message: str) -> PliniusError:
    """An error of the class another rank named (a plinius error, else PliniusError) saying
    ``message`` as given (whatever that class's constructor would have built)."""
    found = getattr(_errors, name, None)
    cls = found if isinstance(found, type) and issubclass(found, PliniusError) else PliniusError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    return exc


def agree(link: RankLink, mine: BaseException | None, what: str) -> None:
    """All ranks learn every rank's verdict on ``what``; each raises the first refusal found
    (its class, its line prefixed with the rank), or its own error if only it failed."""
    verdicts = link.all_gather_bytes(_verdict(mine), MAX_REPORT)
    for rank, v in enumerate(verdicts):
        if v == b"ok":
            continue
        try:
            kind, message = json.loads(v)
            kind, line = str(kind), str(message)
        except (ValueError, TypeError):
            kind, line = "PliniusError", "sent an unreadable verdict"
        if not line.startswith(f"rank {rank}"):
            line = f"rank {rank}: {line}"
        if rank == link.rank and mine is not None and isinstance(mine, PliniusError):
            raise mine
        raise _error(kind, f"{what} refused: {line}")
    if mine is not None:
        raise mine


# --- the rank's part -----------------------------------------------------------------------------


class RankMirror:
    """Rank ``link.rank``'s side of a run's mirror on ``backend`` (each rank its own instance,
    or one shared server): its two part blobs, its slot record, and (rank 0) the global
    manifest."""

    def __init__(
        self,
        link: RankLink,
        backend: Backend,
        engine: Engine,
        fingerprint: bytes,
        counters: MirrorCounters,
        base: str = DEFAULT_BASE,
    ) -> None:
        self.link = link
        self.backend = backend
        self.engine = engine
        self.fingerprint = fingerprint
        self.counters = counters
        self.base = base
        self.rank = link.rank
        self.stores = [
            MirrorStore(backend, engine, fingerprint, part_blob(base, self.rank, v)) for v in (0, 1)
        ]
        self.slot = part_slot(backend, base, self.rank)
        self.where = f"rank {self.rank}'s part in {backend.spec}"

        #: which part blob the committed global manifest lists for this rank (None: none)
        self.live: int | None = None
        #: a global manifest write failed: which part it lists is unknown until a restore
        self.unsure = False

    def next_blob(self) -> int:
        """The part blob the next save writes: never the one the global manifest lists."""
        if self.unsure:
            raise DistributedSaveError(
                "the last global manifest write failed, so which part it lists is unknown: "
                "restore (start the run again) before saving again"
            )
        return 0 if self.live is None else 1 - self.live

    def guard(self, *, settle: bool) -> FreshnessGuard:
        return self.counters.guard(self.slot, self.where, settle=settle)

    # --- save ------------------------------------------------------------------------------

    def commit(self, stamp: Stamp, extent: Extent | None, iteration: int,
               failed: BaseException | None, table: list[Any], blob: int) -> None:  # fmt: skip
        """Phase two of save ``stamp.version`` once this rank's part is durable (or ``failed``):
        returns when the global manifest listing this part is durable; raises on every rank
        when any rank failed (no rank then commits)."""
        link = self.link
        raw = json.dumps(table, separators=(",", ":")).encode()
        report = {
            "version": stamp.version,
            "run": stamp.run_id.hex(),
            "save": stamp.save_id.hex(),
            "extent": [extent.size, extent.manifest] if extent is not None else None,
            "blob": blob,
            "plan": hashlib.sha256(raw).hexdigest(),
            "error": None if failed is None else _verdict(failed).decode(),
        }
        reports = [_report(b) for b in link.all_gather_bytes(json.dumps(report).encode(),
                                                              MAX_REPORT)]  # fmt: skip
        what = f"save {stamp.version}"
        for rank, r in enumerate(reports):
            why = _report_problem(r, report)
            if why is not None:
                if rank == link.rank and failed is not None:
                    raise failed
                raise DistributedSaveError(
                    f"{what} aborted: rank {rank} {why}; no rank committed it (every rank "
                    f"restores save {stamp.version - 1} or earlier)"
                )
        sealed: bytes | None = None
        if link.rank == 0:
            parts = tuple(
                PartEntry(k, bytes.fromhex(r["save"]), r["extent"][0], r["extent"][1], r["blob"])
                for k, r in enumerate(reports)
            )
            g = GlobalManifest(stamp.version, stamp.run_id, iteration, link.world, parts,
                               table)  # fmt: skip
            try:
                sealed = b"G" + seal_global(self.engine, self.fingerprint, g)
                if len(sealed) > _MESSAGE:  # a reader would refuse it: never over the last one
                    raise DistributedSaveError(
                        f"the global manifest of {what} would be {len(sealed) - 1} B, over the "
                        f"{MAX_GLOBAL} B a restore reads"
                    )
                with self.backend.begin_write(global_blob(self.base), len(sealed) - 1) as txn:
                    txn.view(0, len(sealed) - 1)[:] = sealed[1:]
                    txn.commit()
            except Exception as exc:  # every rank must hear of any failure
                sealed = b"E" + str(exc).encode()[:MAX_REPORT]
        got = link.broadcast_bytes(sealed, _MESSAGE)
        if got[:1] != b"G":
            # the write may have been durable all the same: no save may overwrite a part it
            # might list until a restore has read which one it is
            self.unsure = True
            raise DistributedSaveError(
                f"{what} aborted: rank 0 could not write the global manifest "
                f"({got[1:].decode(errors='replace')}); restore before saving again"
            )
        g = open_global(self.engine, self.fingerprint, got[1:], f"the global manifest of {what}")
        assert extent is not None
        if (g.stamp_of(link.rank), g.extent_of(link.rank), g.parts[link.rank].blob) != (
            stamp,
            extent,
            blob,
        ):
            raise IntegrityError(f"rank {link.rank}: the global manifest of {what} does not "
                                 "list this rank's part; not committed")  # fmt: skip

    # --- restore ---------------------------------------------------------------------------

    def read_global(self) -> GlobalManifest | None:
        """Rank 0 reads the stored global manifest (bounded before it is read whole) and every
        rank authenticates the same bytes. None: no mirror was ever committed here."""
        what = f"the global manifest in {self.backend.spec}/{global_blob(self.base)}"
        msg: bytes | None = None
        if self.link.rank == 0:
            try:
                msg = b"N"
                head = self.backend.read(global_blob(self.base), 0, _GHEAD.size)
                if head is not None:
                    size = global_size(bytes(head.data), what)
                    whole = self.backend.read(global_blob(self.base), 0, size)
                    if whole is None or whole.data.nbytes != size:
                        raise FormatError(f"{what} changed while it was read")
                    msg = b"G" + bytes(whole.data)
            except Exception as exc:  # every rank must hear of it
                msg = b"E" + _verdict(exc)
        got = self.link.broadcast_bytes(msg, _MESSAGE)
        mine: BaseException | None = None
        g: GlobalManifest | None = None
        try:
            if got[:1] == b"E":
                kind, line = json.loads(got[1:])
                raise _error(str(kind), f"rank 0: {line}")
            if got[:1] == b"G":
                g = open_global(self.engine, self.fingerprint, got[1:], what)
            elif got != b"N":
                raise FormatError(f"{what}: rank 0 sent an unreadable answer")
        except Exception as exc:  # agreed on, then raised on every rank
            mine = exc
        agree(self.link, mine, "the restore")
        return g

    def absent(self) -> None:
        """No global manifest: every rank's record must hold no committed part."""
        mine: BaseException | None = None
        try:
            self.guard(settle=False).absent()
        except Exception as exc:  # agreed on, then raised on every rank
            mine = exc
        agree(self.link, mine, "the restore")

    def part_guard(self, g: GlobalManifest, rank: int, backend: Backend) -> PartGuard:
        where = f"rank {rank}'s part in {backend.spec}"
        inner = self.counters.guard(part_slot(backend, self.base, rank), where, settle=False)
        return PartGuard(inner, g.stamp_of(rank), g.extent_of(rank), rank)

    def load_own(self, g: GlobalManifest, into: Callable[[MirrorInfo], Any]) -> Restored:
        """This rank's part of ``g`` decrypted ``into`` the model (checks before any read);
        every rank's verdict agreed, then the record settled to it."""
        mine: BaseException | None = None
        got: Restored | None = None
        try:
            got = self._load(g, self.rank, self.backend, into)
        except Exception as exc:  # agreed on, then raised on every rank
            mine = exc
        agree(self.link, mine, f"the restore of save {g.version}")
        assert got is not None
        self.counters.check(self.slot, self.where, g.stamp_of(self.rank), settle=True)
        return got

    def load_parts(
        self, g: GlobalManifest, ranks: Sequence[int], backend_of: Callable[[int], Backend]
    ) -> dict[int, Restored]:
        """Parts of other ranks (a restore at another world size): each read whole into new
        arrays, checked against ``g`` and against this platform's record of that rank's slot."""
        mine: BaseException | None = None
        got: dict[int, Restored] = {}
        try:
            for r in ranks:
                got[r] = self._load(g, r, backend_of(r), None)
        except Exception as exc:  # agreed on, then raised on every rank
            mine = exc
        agree(self.link, mine, f"the restore of save {g.version}")
        return got

    def _load(
        self,
        g: GlobalManifest,
        rank: int,
        backend: Backend,
        into: Callable[[MirrorInfo], Any] | None,
    ) -> Restored:
        which = g.parts[rank].blob
        store = (
            self.stores[which]
            if backend is self.backend and rank == self.rank
            else MirrorStore(backend, self.engine, self.fingerprint,
                             part_blob(self.base, rank, which))
        )  # fmt: skip
        got = store.load(into=into, freshness=self.part_guard(g, rank, backend))
        if got is None:
            raise RollbackError(
                f"rank {rank}: its part of save {g.version} is missing from {backend.spec} "
                "(deleted or never written); refused"
            )
        return got


def _report(raw: bytes) -> dict[str, Any]:
    try:
        r = json.loads(raw)
        if not isinstance(r, dict):
            raise ValueError
        return r
    except ValueError:
        return {"error": "sent an unreadable report"}


def _report_problem(r: dict[str, Any], mine: dict[str, Any]) -> str | None:
    """Why a rank's report stops the save (None: it is a part of this save)."""
    if r.get("error"):
        err = r["error"]
        with contextlib.suppress(ValueError, TypeError, IndexError):
            err = json.loads(err)[1]
        return f"failed ({err})"
    if r.get("version") != mine["version"] or r.get("run") != mine["run"]:
        return f"is at save {r.get('version')} of run {str(r.get('run'))[:8]}"
    if r.get("plan") != mine["plan"]:
        return "holds another tensor table (the ranks' models or optimizers differ)"
    if r.get("blob") not in (0, 1):
        return "sent no part blob"
    e = r.get("extent")
    if not (isinstance(e, list) and len(e) == 2 and all(isinstance(x, int) for x in e)):
        return "sent no extent"
    try:
        if len(bytes.fromhex(str(r.get("save")))) != ID_BYTES:
            raise ValueError
    except ValueError:
        return "sent no save id"
    return None


__all__ = [
    "DEFAULT_BASE",
    "DistributedSaveError",
    "GlobalManifest",
    "PartEntry",
    "PartGuard",
    "RankLink",
    "RankMirror",
    "Record",
    "agree",
    "global_blob",
    "open_global",
    "part_blob",
    "part_slot",
    "seal_global",
]
