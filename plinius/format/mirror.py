"""The mirroring module: seals a model's buffers into one backend blob and opens them again.

A mirror is one blob (layout in ``docs/FORMAT.md``)::

    [header 128 B][sealed record 0][pad][sealed record 1]...[sealed manifest]

The plaintext header names the format, key id, model fingerprint, version and segment size so
that wrong keys, foreign models and newer formats get specific errors before any decryption. The
manifest (JSON: iteration, metadata, and per record layer/name/dtype/shape/offset/length) is
sealed with the whole header as associated data, so no header byte can change unnoticed.

A record (format 3) is sealed as fixed-size *segments* (``SEGMENT_BYTES`` of plaintext, the last
one shorter), each ``[IV][ciphertext][tag]`` with its own IV and tag, so one large layer spreads
over every core of a parallel engine and a restore can read one batch of segments while it
decrypts the previous one. Each segment's associated data binds it to (fingerprint, layer, name,
version, run id, save id) and to (segment index, segment count, record length): segments
swapped between layers, models, versions, runs or saves, or dropped, duplicated, reordered or
cut short, fail to open. The run id and save id (random, see :mod:`plinius.enclave.counter`)
are what the platform's freshness record names. Every ciphertext starts on a page (or
cache-line) boundary so both sealing and decrypting run on aligned memory. Format 2 mirrors (one
sealed buffer per record) still open.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from plinius.backends.base import Backend, Blob, IoStats, WriteTxn
from plinius.core.crypto import (
    IV_BYTES,
    OVERHEAD,
    Engine,
    as_bytes_view,
    associated_data,
    check_key_matches,
)
from plinius.core.crypto_ways import restore_batch_bytes
from plinius.core.errors import (
    BackendError,
    FormatError,
    IntegrityError,
    ModelMismatchError,
    NotAMirrorError,
    StaleMirrorError,
    TruncatedError,
    UnsupportedVersionError,
)
from plinius.core.memory import CACHE_LINE, PAGE, StagingBuffer, align_up, aligned_empty

MAGIC = b"PLNMIRR\x00"
FORMAT_VERSION = 3
#: the oldest format still opened (format 1 binds no run or save id: refused)
OLDEST_FORMAT = 2
HEADER_SIZE = 128
ID_BYTES = 16
# magic, format, header size, flags, key id, version, fingerprint, blob size,
# manifest offset, manifest sealed length, record count, run id, save id,
# segment size (format 3; zero in format 2)
_HEADER = struct.Struct(f"<8sHHI8sQ32sQQII{ID_BYTES}s{ID_BYTES}sI")
#: plaintext bytes per segment. Measured here (64 MiB, one thread): `cryptography` runs at the
#: same speed from 256 KiB to 64 MiB, pycryptodome loses ~5 % at 1 MiB and ~8 % at 256 KiB
#: against 4 MiB (per-call cost); 2 MiB keeps that within ~3 % while a 64 MiB mirror still
#: gives 32 segments to spread over the cores and the padding stays < 0.2 %.
SEGMENT_BYTES = 2 << 20
MAX_SEGMENT = 1 << 30
#: (segment index, segment count, record length) appended to a record's associated data
_SEGMENT_AAD = struct.Struct("<QQQ")
#: plaintext bytes handed to the engine per batched call when saving
_SAVE_BATCH = 16 << 20
MANIFEST_LAYER = -1
MANIFEST_NAME = "__manifest__"
DEFAULT_BLOB = "mirror"


class Record(NamedTuple):
    """One buffer to mirror: a C-contiguous array, sealed in place. (A named tuple: a save
    makes one per buffer, and a frozen dataclass costs ~10 times as much to make.)"""

    layer: int
    name: str
    array: np.ndarray


@dataclass(frozen=True)
class Entry:
    """Where one sealed record sits in the blob (``length`` is the plaintext size)."""

    layer: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int

    def as_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "length": self.length,
        }


@dataclass
class MirrorInfo:
    """What a stored mirror says about itself, after authentication."""

    version: int
    iteration: int
    fingerprint: bytes
    meta: dict[str, Any]
    entries: list[Entry]
    size: int
    run_id: bytes = bytes(ID_BYTES)
    save_id: bytes = bytes(ID_BYTES)
    #: plaintext bytes per segment; 0: a format 2 mirror (one sealed buffer per record)
    segment: int = SEGMENT_BYTES
    format: int = FORMAT_VERSION

    @property
    def metadata_bytes(self) -> int:
        """Encryption metadata of this mirror (see :func:`metadata_bytes`)."""
        return metadata_bytes([e.length for e in self.entries], self.segment)


@dataclass(frozen=True)
class HeaderStamp:
    """What a stored mirror's plaintext header says of itself, unauthenticated: its stamp
    (run, version, save) and its extent (blob size, sealed manifest length)."""

    run_id: bytes
    version: int
    save_id: bytes
    size: int
    manifest: int


def header_stamp(data: memoryview) -> HeaderStamp | None:
    """The stamp and extent a stored mirror's plaintext header names; None if it is not one.
    Unauthenticated: for copying sealed bytes elsewhere (replicas) without opening them."""
    if data.nbytes < HEADER_SIZE:
        return None
    fields = _HEADER.unpack(bytes(data[: _HEADER.size]))
    if fields[0] != MAGIC:
        return None
    return HeaderStamp(fields[11], fields[5], fields[12], fields[7], fields[9])


def physical_memory() -> int:
    """Bytes of RAM on this machine: no mirror it can restore is larger."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def metadata_bytes(records: int | Iterable[int], segment: int = SEGMENT_BYTES) -> int:
    """Encryption metadata of a mirror: 28 B (IV + tag) per segment and for the manifest.

    ``records``: the records' plaintext lengths (each counts its segments), or just how many
    records there are (each then counts as one segment, true for records up to ``segment``).
    The one place this size is computed (reports, ``verify``, the trainer)."""
    if isinstance(records, int):
        return OVERHEAD * (records + 1)
    return OVERHEAD * (sum(segment_count(n, segment) for n in records) + 1)


def check_segment(segment: int) -> int:
    """A format 3 segment size: a multiple of the page size, at most ``MAX_SEGMENT``."""
    if segment < PAGE or segment % PAGE or segment > MAX_SEGMENT:
        raise ValueError(
            f"segment size must be a multiple of {PAGE} B between {PAGE} B and {MAX_SEGMENT} B, "
            f"got {segment}"
        )
    return segment


def segment_count(length: int, segment: int) -> int:
    """How many sealed segments a record of ``length`` bytes takes (0 B still takes one, whose
    tag proves the record is there and empty); ``segment`` 0: format 2, always one."""
    return 1 if segment == 0 else max(1, -(-length // segment))


def record_segments(offset: int, length: int, segment: int) -> list[tuple[int, int, int]]:
    """(blob offset of its IV, plaintext start, plaintext length) of every segment of a record
    whose first segment starts at ``offset``. Each later segment's ciphertext starts on the next
    page (or cache-line) boundary after the previous tag, so the reader derives the layout from
    (offset, length, segment size) alone."""
    count = segment_count(length, segment)
    step = length if segment == 0 else segment
    out: list[tuple[int, int, int]] = []
    at = offset
    for i in range(count):
        start = i * step
        n = min(step, length - start)
        if i:
            at = align_up(at + IV_BYTES, _ct_align(n)) - IV_BYTES
        out.append((at, start, n))
        at += n + OVERHEAD
    return out


def record_end(offset: int, length: int, segment: int) -> int:
    """Where a record's last sealed segment ends in the blob."""
    at, _, n = record_segments(offset, length, segment)[-1]
    return at + n + OVERHEAD


def segment_aad(record: bytes, index: int, count: int, length: int, segment: int) -> bytes:
    """Associated data of one segment: the record's, plus (index, count, record length) in
    format 3 so segments cannot be dropped, duplicated, reordered or cut short."""
    return record if segment == 0 else record + _SEGMENT_AAD.pack(index, count, length)


@dataclass
class Restored:
    info: MirrorInfo
    arrays: dict[tuple[int, str], np.ndarray]
    stats: IoStats = field(default_factory=IoStats)


def _ct_align(length: int) -> int:
    return PAGE if length >= PAGE else CACHE_LINE


def plan(records: Sequence[Record], segment: int = SEGMENT_BYTES) -> tuple[list[Entry], int]:
    """Offsets of each sealed record (every segment's ciphertext aligned) and where the manifest
    starts. ``segment`` 0 lays records out as format 2 did (one sealed buffer each)."""
    entries: list[Entry] = []
    cursor = HEADER_SIZE
    seen: set[tuple[int, str]] = set()
    for r in records:
        if (r.layer, r.name) in seen:
            raise ValueError(f"duplicate record layer {r.layer} name {r.name!r}")
        seen.add((r.layer, r.name))
        if not r.array.flags.c_contiguous:
            raise ValueError(f"record layer {r.layer} {r.name!r} is not C-contiguous")
        n = r.array.nbytes
        first = n if segment == 0 else min(n, segment)
        offset = align_up(cursor + IV_BYTES, _ct_align(first)) - IV_BYTES
        entries.append(Entry(r.layer, r.name, r.array.dtype.str, r.array.shape, offset, n))
        cursor = record_end(offset, n, segment)
    return entries, cursor


def _manifest_aad(fingerprint: bytes, header: bytes, version: int) -> bytes:
    return associated_data(fingerprint, MANIFEST_LAYER, MANIFEST_NAME, version) + header


def record_aad(
    fingerprint: bytes, layer: int, name: str, version: int, run_id: bytes, save_id: bytes
) -> bytes:
    """Associated data of one record: binds it to its model, place, version, run and save."""
    return associated_data(fingerprint, layer, name, version) + run_id + save_id


Buffers = Mapping[tuple[int, str], np.ndarray]
#: where a restore decrypts to: a map of arrays, or a callable that makes one once the mirror's
#: authenticated layout is known (a model that allocates state lazily prepares it there)
Into = Buffers | Callable[["MirrorInfo"], Buffers] | None


class Freshness(Protocol):
    """The platform's check of a mirror slot (:class:`plinius.enclave.counter.FreshnessGuard`)."""

    def recorded_sizes(self) -> tuple[int, ...]:
        """The blob sizes the platform recorded for the slot (committed, in flight); empty
        when it recorded none. Trusted: a reader may size its first read by them."""

    def admit(self, run_id: bytes, version: int, save_id: bytes, size: int, manifest: int) -> bool:
        """Before the reader allocates or reads what the unauthenticated header claims: refuse
        a stamp or extent the platform did not record. False: no extent was recorded (the
        reader then bounds the sizes itself)."""

    def __call__(self, info: MirrorInfo) -> None:
        """After the manifest authenticated the header: refuse all but the committed mirror."""


#: the largest sealed manifest read without a platform record of its size to bound it (JSON:
#: ~150 B per record plus the metadata: a model of 100,000 tensors needs ~15 MiB)
MAX_MANIFEST = 64 << 20
#: a peek reads a blob of at most this many bytes (its size as the platform recorded it, or as
#: probed) whole, in one read; a larger one by its header, then its manifest (the two ends of
#: the blob). Big enough for a small model's whole mirror (a chosen replica is then not read
#: again), small enough that a peek never moves much of a large mirror's records.
PEEK_WHOLE = 256 << 10
#: without a platform record of the blob's size, a blob is read whole before its header was
#: checked only up to this fixed bound (with one, up to the recorded size)
_UNRECORDED_WHOLE = PEEK_WHOLE
#: read whole, whatever the size (a restore: bounded by the record, or checked header first)
_ALL = 1 << 62


def _manifest_bytes(
    version: int, iteration: int, fp: bytes, meta: Mapping[str, Any], entries: Iterable[Entry]
) -> bytes:
    doc = {
        "format": FORMAT_VERSION,
        "fingerprint": fp.hex(),
        "version": version,
        "iteration": iteration,
        "meta": dict(meta),
        "records": [e.as_json() for e in entries],
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


#: the version packed into associated data (after the fixed prefix, before run and save ids)
_STAMP_AAD = struct.Struct("<Q")
#: the manifest's JSON encoder (compact, sorted keys: what ``_manifest_bytes`` writes), kept
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


@dataclass
class _SaveLayout:
    """One layout of records as a save writes it (cached by :meth:`MirrorStore._layout`): the
    entries and where the manifest starts; per record, per segment, ``(AAD prefix, AAD suffix,
    blob offset, plaintext start, plaintext length)`` where a segment's associated data is
    ``prefix | u64 version | run id | save id | suffix`` (the same bytes as
    :func:`segment_aad` of :func:`record_aad`); and the manifest's JSON around ``meta``."""

    signature: list[tuple[int, str, str, tuple[int, ...]]]
    fingerprint: bytes
    entries: list[Entry]
    manifest_at: int
    segments: list[list[tuple[bytes, bytes, int, int, int]]]
    manifest_aad_prefix: bytes
    json_head: bytes
    json_records: bytes

    @classmethod
    def build(
        cls,
        signature: list[tuple[int, str, str, tuple[int, ...]]],
        records: Sequence[Record],
        fingerprint: bytes,
        segment: int,
    ) -> _SaveLayout:
        entries, manifest_at = plan(records, segment)
        segments = []
        for e in entries:
            prefix = associated_data(fingerprint, e.layer, e.name, 0)[: -_STAMP_AAD.size]
            segs = record_segments(e.offset, e.length, segment)
            segments.append(
                [
                    (prefix, segment_aad(b"", i, len(segs), e.length, segment), at, start, n)
                    for i, (at, start, n) in enumerate(segs)
                ]
            )
        # _manifest_bytes's document, keys in sorted order, cut around iteration, meta, version
        head = _JSON.encode({"fingerprint": fingerprint.hex(), "format": FORMAT_VERSION})
        records_json = _JSON.encode([e.as_json() for e in entries])
        return cls(
            signature,
            fingerprint,
            entries,
            manifest_at,
            segments,
            associated_data(fingerprint, MANIFEST_LAYER, MANIFEST_NAME, 0)[: -_STAMP_AAD.size],
            head[:-1].encode() + b',"iteration":',
            b',"records":' + records_json.encode() + b',"version":',
        )

    def manifest(self, version: int, iteration: int, meta: Mapping[str, Any]) -> bytes:
        """The manifest's JSON: the bytes :func:`_manifest_bytes` gives, from the cached parts."""
        if type(version) is int and type(iteration) is int:
            out = b"".join(
                (
                    self.json_head,
                    b"%d" % iteration,
                    b',"meta":',
                    _JSON.encode(dict(meta)).encode(),
                    self.json_records,
                    b"%d}" % version,
                )
            )
        else:  # what json makes of another kind of number
            out = _manifest_bytes(version, iteration, self.fingerprint, meta, self.entries)
        return out


@dataclass(frozen=True)
class _Header:
    """A mirror's plaintext header, unpacked (``raw``: its 128 bytes, the manifest's AAD)."""

    raw: bytes
    magic: bytes
    fmt: int
    hsize: int
    flags: int
    kid: bytes
    version: int
    fp: bytes
    total: int
    m_at: int
    m_len: int
    count: int
    run_id: bytes
    save_id: bytes
    segment: int


@dataclass
class PeekedMirror:
    """A stored mirror whose header and manifest were read, authenticated and checked fresh
    once (:meth:`MirrorStore.peeked`). Handed to :meth:`MirrorStore.open` or
    :meth:`MirrorStore.load` of the same store, its records are read (unless the peek read the
    whole blob already) under the same authenticated header, not authenticated again.

    ``data``: the whole blob when the peek read it whole, else None; it is the backend's view,
    valid until that backend's next read (open or load before reading it again).
    """

    store: MirrorStore = field(repr=False)
    info: MirrorInfo
    #: the authenticated 128-byte header: a later read of the records must find the same
    header: bytes
    data: memoryview | None
    stats: IoStats
    seconds: float
    min_version: int | None = None
    freshness: Freshness | None = field(default=None, repr=False)


class MirrorStore:
    """Seals named arrays of one model into one blob of a backend, and opens them again."""

    def __init__(
        self,
        backend: Backend,
        engine: Engine,
        fingerprint: bytes | None,
        blob: str = DEFAULT_BLOB,
        *,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        """``fingerprint=None`` opens whatever model the mirror holds (owner tools: export).
        ``segment_bytes``: plaintext per sealed segment of new mirrors (readers take the size
        each mirror records)."""
        if fingerprint is not None and len(fingerprint) != 32:
            raise ValueError("model fingerprint must be 32 bytes (SHA-256)")
        self.backend = backend
        self.engine = engine
        self.fingerprint = fingerprint
        self.blob = blob
        self.segment = check_segment(segment_bytes)
        self._save_layout: _SaveLayout | None = None
        self._restore_cache: _RestoreLayout | None = None
        #: (segment, manifest offset, every record's (offset, length)) last found in bounds
        self._extents_checked: tuple[Any, ...] | None = None
        self._stream_bufs = (StagingBuffer(), StagingBuffer())

    @property
    def what(self) -> str:
        """How errors and the freshness record name this mirror: ``mirror SPEC/KEY``."""
        return f"mirror {self.backend.spec}/{self.blob}"

    # --- save --------------------------------------------------------------------------------

    def _layout(self, records: Sequence[Record]) -> _SaveLayout:
        """What a save of ``records`` writes that does not change from save to save while their
        (layer, name, dtype, shape) stay the same: offsets, the manifest's record list as JSON,
        every segment's place and the fixed parts of its associated data. Built again when the
        layout changes (an optimizer that grew its state, another model)."""
        sig = [(r.layer, r.name, r.array.dtype.str, r.array.shape) for r in records]
        cached = self._save_layout
        if cached is None or cached.signature != sig:
            assert self.fingerprint is not None
            cached = _SaveLayout.build(sig, records, self.fingerprint, self.segment)
            self._save_layout = cached
        return cached

    def _restore_layout(self, info: MirrorInfo) -> _RestoreLayout:
        """:class:`_RestoreLayout` of ``info`` (authenticated), kept while the layout stays."""
        key = _RestoreLayout.key_of(info)
        cached = self._restore_cache
        if cached is None or cached.key != key:
            cached = _RestoreLayout.build(info, self.what, key)
            self._restore_cache = cached
        return cached

    def save(
        self,
        records: Sequence[Record],
        version: int,
        iteration: int = 0,
        meta: Mapping[str, Any] | None = None,
        *,
        run_id: bytes | None = None,
        save_id: bytes | None = None,
        before_write: Callable[[int, int], None] | None = None,
        engine: Engine | None = None,
    ) -> IoStats:
        """Replace the stored mirror atomically by a new one at ``version``.

        ``run_id`` and ``save_id`` (random when not given) are the stamp the platform's
        freshness record names; ``before_write(blob size, sealed manifest length)`` is called
        once both are known and before anything is written (the enclave records the save in
        flight there). Every segment of every record goes to the engine in a few batched calls:
        ``engine`` (same key) when given, e.g. the one chosen for asynchronous mirrors, which
        share the cores with training; else the store's.
        """
        engine = self.engine if engine is None else engine
        if engine.key_id != self.engine.key_id:
            raise ValueError("the sealing engine must hold the store's key")
        if version < 0:
            raise ValueError("mirror version must be >= 0")
        run_id = os.urandom(ID_BYTES) if run_id is None else run_id
        save_id = os.urandom(ID_BYTES) if save_id is None else save_id
        if len(run_id) != ID_BYTES or len(save_id) != ID_BYTES:
            raise ValueError(f"run and save ids must be {ID_BYTES} bytes")
        if self.fingerprint is None:
            raise ValueError("saving needs the model fingerprint")
        fingerprint = self.fingerprint
        seg = self.segment
        t0 = time.perf_counter()
        layout = self._layout(records)
        manifest_at = layout.manifest_at
        manifest = layout.manifest(version, iteration, meta or {})
        m_len = len(manifest) + OVERHEAD
        total = manifest_at + m_len
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            HEADER_SIZE,
            0,
            engine.key_id,
            version,
            fingerprint,
            total,
            manifest_at,
            m_len,
            len(layout.entries),
            run_id,
            save_id,
            seg,
        ).ljust(HEADER_SIZE, b"\0")
        if before_write is not None:
            before_write(total, m_len)
        with self.backend.begin_write(self.blob, total) as txn:
            txn.view(0, HEADER_SIZE)[:] = header
            batch = _SealBatch(txn, engine)
            stamp = _STAMP_AAD.pack(version) + run_id + save_id
            for rec, segs in zip(records, layout.segments, strict=True):
                plain = as_bytes_view(rec.array)
                for prefix, suffix, at, start, n in segs:
                    batch.add(prefix + stamp + suffix, plain[start : start + n], at, n)
            batch.add(layout.manifest_aad_prefix + _STAMP_AAD.pack(version) + header, manifest,
                      manifest_at, -1)  # fmt: skip
            batch.flush()
            io = txn.commit()
        io.encrypt_s += batch.seconds
        io.bytes = total
        io.total_s = time.perf_counter() - t0
        return io

    # --- open --------------------------------------------------------------------------------

    def _check_header(
        self,
        data: memoryview,
        min_version: int | None,
        freshness: Freshness | None,
        size: int | None = None,
    ) -> _Header:
        """The plaintext header of a blob of ``size`` B (default: ``data``'s), checked: format,
        sizes, key, model, version bound; then admitted by the platform (stamp and extent) or,
        without a platform record, bounded by ``MAX_MANIFEST`` (and the blob by this machine's
        memory). Nothing the header claims is allocated or read before this returns."""
        what = self.what
        nbytes = data.nbytes if size is None else size
        if nbytes < HEADER_SIZE:
            if nbytes >= len(MAGIC) and bytes(data[: len(MAGIC)]) == MAGIC:
                raise TruncatedError(
                    f"{what} is truncated: {nbytes} B, shorter than its {HEADER_SIZE} B header"
                )
            raise NotAMirrorError(f"{what} is not a plinius mirror ({nbytes} B, no header)")
        if data.nbytes < HEADER_SIZE:  # cut between the size probe and the read
            raise TruncatedError(
                f"{what} changed while it was read: {nbytes} B, then only {data.nbytes} B of "
                f"its {HEADER_SIZE} B header came back"
            )
        raw = bytes(data[:HEADER_SIZE])
        h = _Header(raw, *_HEADER.unpack(raw[: _HEADER.size]))
        if h.magic != MAGIC:
            raise NotAMirrorError(f"{what} is not a plinius mirror (magic {h.magic!r})")
        if h.fmt > FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"{what} uses mirror format {h.fmt}, this plinius reads up to {FORMAT_VERSION}: "
                "upgrade plinius"
            )
        if h.fmt < OLDEST_FORMAT:
            raise UnsupportedVersionError(
                f"{what} uses mirror format {h.fmt}, which binds no run or save id, so its "
                "freshness cannot be proven: start over with --fresh"
            )
        if h.hsize != HEADER_SIZE or h.m_len < OVERHEAD or h.m_at + h.m_len != h.total:
            raise FormatError(f"{what} has an inconsistent header (corrupt file)")
        if nbytes < h.total:
            raise TruncatedError(f"{what} is truncated: {nbytes} B of {h.total} B")
        if nbytes > h.total:
            raise FormatError(
                f"{what} is {nbytes} B, but its header says {h.total} B: bytes were added "
                "after the manifest (not what plinius wrote)"
            )
        check_key_matches(what, h.kid, self.engine)
        if self.fingerprint is not None and h.fp != self.fingerprint:
            raise ModelMismatchError(
                f"{what} belongs to model {h.fp.hex()}, not to this model "
                f"{self.fingerprint.hex()}: use the model it was trained with, or --fresh"
            )
        if min_version is not None and h.version < min_version:
            raise StaleMirrorError(what, h.version, min_version)
        admitted = freshness is not None and freshness.admit(
            h.run_id, h.version, h.save_id, h.total, h.m_len
        )
        if not admitted:
            self._bound_size(nbytes)
        if not admitted and h.m_len > MAX_MANIFEST:
            raise FormatError(
                f"{what} claims a {h.m_len} B manifest, more than any mirror has "
                f"({MAX_MANIFEST} B): corrupt or hostile storage, refusing to read it"
            )
        return h

    def _open_info(
        self,
        data: memoryview,
        min_version: int | None,
        freshness: Freshness | None = None,
        size: int | None = None,
        header: _Header | None = None,
    ) -> MirrorInfo:
        """``data``: the whole blob; or, with ``size`` (the blob's), only its first bytes (the
        header at least), and the manifest is then read by range (never moving the records).
        ``header``: the blob's header, checked and admitted already (:meth:`_check_header`)."""
        what = self.what
        h = header or self._check_header(data, min_version, freshness, size)
        fp, version, m_at, m_len, total = h.fp, h.version, h.m_at, h.m_len, h.total
        header_bytes, fmt, segment, count = h.raw, h.fmt, h.segment, h.count
        run_id, save_id = h.run_id, h.save_id
        manifest = bytearray(m_len - OVERHEAD)
        sealed = data[m_at:total] if size is None else self._read_range(m_at, m_len)
        self.engine.decrypt_into(
            _manifest_aad(fp, header_bytes, version), sealed, manifest, f"{what} manifest"
        )
        # the segment size is used only once the manifest tag has authenticated the header
        if fmt == 2:
            good_segment = segment == 0
        else:
            good_segment = PAGE <= segment <= MAX_SEGMENT and segment % PAGE == 0
        if not good_segment:
            raise FormatError(f"{what} records an impossible segment size {segment} B")
        doc = json.loads(manifest)
        entries = [
            Entry(r["layer"], r["name"], r["dtype"], tuple(r["shape"]), r["offset"], r["length"])
            for r in doc["records"]
        ]
        if len(entries) != count or doc["version"] != version:
            raise IntegrityError(f"{what} manifest", "disagrees with the header")
        extents = (segment, m_at, tuple((e.offset, e.length) for e in entries))
        if extents != self._extents_checked:  # the same extents as last time: checked already
            for e in entries:
                if (
                    e.offset < HEADER_SIZE
                    or e.length < 0
                    or e.offset + e.length + OVERHEAD > m_at
                    or record_end(e.offset, e.length, segment) > m_at
                ):
                    raise IntegrityError(f"{what} manifest", f"record {e.name} out of bounds")
            self._extents_checked = extents
        info = MirrorInfo(
            version,
            doc["iteration"],
            fp,
            doc["meta"],
            entries,
            total,
            run_id,
            save_id,
            segment=segment,
            format=fmt,
        )
        if freshness is not None:
            freshness(info)
        return info

    def peek(
        self, min_version: int | None = None, freshness: Freshness | None = None
    ) -> MirrorInfo | None:
        """Authenticate the header and manifest only (records stay sealed); None if no mirror.

        A backend with ranged reads moves only the header and the manifest, not the records:
        one read when the blob is at most ``PEEK_WHOLE`` B (read whole), else two (the header,
        then the manifest: they sit at the two ends of the blob). The blob's size comes from the
        platform's record of the slot when ``freshness`` has one; otherwise a size probe comes
        first.
        """
        peeked = self.peeked(min_version, freshness)
        return None if peeked is None else peeked.info

    def peeked(
        self, min_version: int | None = None, freshness: Freshness | None = None
    ) -> PeekedMirror | None:
        """:meth:`peek`, kept for :meth:`open` or :meth:`load` of this store: a restore that
        peeks first (to choose among replicas) authenticates the header and manifest once."""
        return self._peek(min_version, freshness, PEEK_WHOLE)

    def _peek(
        self, min_version: int | None, freshness: Freshness | None, whole: int
    ) -> PeekedMirror | None:
        """Read and authenticate the header and manifest, checked fresh; a blob of at most
        ``whole`` B is read whole (in one read when its size is recorded, or at most
        ``_UNRECORDED_WHOLE``), a larger one by its header and its manifest only."""
        t0 = time.perf_counter()
        if not self.backend.ranged_read:
            got = self.backend.read(self.blob)
            if got is None:
                return None
            info = self._open_info(got.data, min_version, freshness)
            header = bytes(got.data[:HEADER_SIZE])
            return PeekedMirror(
                self, info, header, got.data, got.stats, time.perf_counter() - t0,
                min_version, freshness,
            )  # fmt: skip
        head = self._head(freshness, whole)
        if head is None:
            return None
        data, size, stats = head
        checked = self._check_header(data, min_version, freshness, size)
        h: _Header | None = checked
        if data.nbytes < size <= whole:  # wanted whole, and its size is admitted now
            got = self._read_blob(0, size)
            data, stats = got.data, stats.merge(got.stats)
            if got.size != size or bytes(data[:HEADER_SIZE]) != checked.raw:
                h, size = None, got.size  # replaced between the reads: checked from scratch
        # copied now: reading the manifest by range may reuse the memory ``data`` views
        header = bytes(data[:HEADER_SIZE])
        if data.nbytes == size:
            info = self._open_info(data, min_version, freshness, header=h)
            whole_blob: memoryview | None = data
        else:  # the manifest is read by range; the records stay where they are
            info = self._open_info(data, min_version, freshness, size=size, header=h)
            whole_blob = None
        return PeekedMirror(
            self, info, header, whole_blob, stats, time.perf_counter() - t0, min_version,
            freshness,
        )  # fmt: skip

    def _head(
        self, freshness: Freshness | None, whole: int
    ) -> tuple[memoryview, int, IoStats] | None:
        """The first read of a ranged blob, and the blob's size: the whole blob when its size is
        at most ``whole``, else its header. With a platform record of the slot's sizes (trusted)
        this is the only read before the header is checked, sized by the least recorded size;
        without one the blob's size is probed first and only a blob of at most
        ``_UNRECORDED_WHOLE`` B is read whole before its header is checked."""
        sizes = freshness.recorded_sizes() if freshness is not None else ()
        if not sizes:
            size = self._probe()
            return None if size is None else self._head_probed(size, whole)
        least = min(sizes)
        n = least if least <= whole else min(least, HEADER_SIZE)
        try:
            got = self.backend.read(self.blob, 0, n)
        except BackendError:
            # Shorter than anything recorded (or the backend failed): the blob is judged as
            # without a record, so a cut or foreign blob gets its specific error.
            size = self._probe()
            if size is None:
                return None
            if size >= n:
                raise
            return self._head_probed(size, whole)
        if got is None:
            return None
        return got.data, got.size, got.stats

    def _head_probed(self, size: int, whole: int) -> tuple[memoryview, int, IoStats]:
        n = size if size <= min(whole, _UNRECORDED_WHOLE) else min(size, HEADER_SIZE)
        got = self._read_blob(0, n)
        return got.data, got.size, got.stats

    def _probe(self) -> int | None:
        """The blob's size (None: no blob), refused when no mirror this machine could restore
        is that large; reads no bytes."""
        probe = self.backend.read(self.blob, 0, 0)
        if probe is None:
            return None
        self._bound_size(probe.size)
        return probe.size

    def _bound_size(self, size: int) -> None:
        if size > physical_memory():
            raise FormatError(
                f"{self.what} claims {size} B, more than this machine's memory "
                f"({physical_memory()} B): corrupt or hostile storage, refusing to read it"
            )

    def _read_blob(self, offset: int, length: int) -> Blob:
        blob = self.backend.read(self.blob, offset, length)
        if blob is None:
            raise NotAMirrorError(f"{self.what} was deleted while it was read")
        return blob

    def _read_range(self, offset: int, length: int) -> memoryview:
        return self._read_blob(offset, length).data

    def open(
        self,
        min_version: int | None = None,
        freshness: Freshness | None = None,
        *,
        peeked: PeekedMirror | None = None,
    ) -> OpenedMirror | None:
        """Read the blob once and authenticate its header and manifest (checked fresh); the
        records stay sealed until :meth:`OpenedMirror.verify` or :meth:`OpenedMirror.load`,
        which use this same read. None if no mirror was ever saved.

        With the platform's record of the blob's size (``freshness``) a ranged backend reads
        it in one read of that size; without, its size is probed and its header checked first.
        ``peeked``: what :meth:`peeked` of this store authenticated (its ``min_version`` and
        ``freshness`` apply): header and manifest are not authenticated again, and the blob is
        read only if the peek did not read it whole."""
        t0 = time.perf_counter()
        if peeked is None:
            peeked = self._peek(min_version, freshness, _ALL)
            if peeked is None:
                return None
        return self._open_peeked(peeked, t0)

    def _open_peeked(self, peeked: PeekedMirror, t0: float) -> OpenedMirror:
        if peeked.store is not self:
            raise ValueError("a peeked mirror opens only through the store that peeked it")
        data, stats = peeked.data, peeked.stats
        if data is None:
            got = self._read_blob(0, peeked.info.size)  # the admitted size, never more
            if got.size != peeked.info.size or bytes(got.data[:HEADER_SIZE]) != peeked.header:
                # replaced since the peek: opened and checked again from scratch
                again = self._peek(peeked.min_version, peeked.freshness, _ALL)
                if again is None:
                    raise NotAMirrorError(f"{self.what} was deleted while it was read")
                return self._open_peeked(again, t0)
            data, stats = got.data, stats.merge(got.stats)
        seconds = time.perf_counter() - t0  # with the peek's, unless the caller peeked first
        return OpenedMirror(
            peeked.info, data, stats, self.engine, self.what, seconds, self._restore_layout
        )

    def verify(
        self, min_version: int | None = None, freshness: Freshness | None = None
    ) -> MirrorInfo | None:
        """Authenticate the whole mirror (every record's tag) without touching any model."""
        opened = self.open(min_version, freshness)
        return None if opened is None else opened.verify()

    def load(
        self,
        into: Into = None,
        min_version: int | None = None,
        freshness: Freshness | None = None,
        *,
        peeked: PeekedMirror | None = None,
    ) -> Restored | None:
        """Open the last committed mirror; decrypt every record into ``into`` (or new arrays).

        Returns None when no mirror was ever saved. Raises a specific error on anything else.
        On an integrity error the destination arrays hold unspecified bytes: restore into the
        model only at start-up, and re-initialise it if this raises.

        A mirror of several batches on a backend with ranged reads is read batch by batch into
        reusable private memory, each batch read while the previous one is decrypted
        (:meth:`Backend.read_into`), after its header and manifest; others are opened in one
        read and decrypted from it. Nothing is ever decrypted from storage the attacker can
        write while it is read (a persistent-memory pool copies out first). ``peeked``: as
        for :meth:`open`.
        """
        backend = self.backend
        t0 = time.perf_counter()
        pipelined = backend.ranged_read
        least = 2 * _batch_bytes(self.segment)  # a smaller mirror gains nothing from a pipeline
        if peeked is None:
            peeked = self._peek(min_version, freshness, least - 1 if pipelined else _ALL)
            if peeked is None:
                return None
        info = peeked.info
        if peeked.data is not None or not pipelined or info.size < least:
            return self._open_peeked(peeked, t0).load(into)
        dests = into(info) if callable(into) else into
        arrays, jobs = _restore_jobs(info, dests, self.what, self._restore_layout(info))
        stats = self._stream(info, jobs)
        stats.read_s += peeked.seconds
        stats.bytes = info.size
        stats.total_s = time.perf_counter() - t0
        return Restored(info, arrays, stats)

    def _stream(self, info: MirrorInfo, jobs: list[_SegmentJob]) -> IoStats:
        """Read the sealed segments batch by batch into reusable page-aligned memory while the
        previous batch is decrypted into the destinations.

        A backend with ``start_read_into`` (``romulus``: the pool's reader thread, in C) copies
        the next batch without the GIL while this thread decrypts; the others read on a Python
        reader thread (``read_into``: the read syscalls release the GIL). A reader thread of
        Python would have to win the GIL from an engine that holds it while decrypting (e.g.
        ``cryptography``) before it could start the next copy, so its copies would run between
        the decrypts instead of beside them: a second pass over the mirror on the critical
        path (what made romulus restores ~2× the raw decrypt time)."""
        batches = _batches(jobs, _batch_bytes(info.segment or self.segment))
        need = max(hi - lo for lo, hi, _ in batches)
        bufs = [b.view(need) for b in self._stream_bufs]
        start = getattr(self.backend, "start_read_into", None)
        try:
            if callable(start):
                return self._stream_ahead(batches, bufs, start)
            return self._stream_threaded(batches, bufs)
        finally:
            for b in bufs:
                b.release()

    def _decrypt_batch(self, batch: list[_SegmentJob], lo: int, buf: memoryview) -> float:
        ts = time.perf_counter()
        self.engine.decrypt_many(
            [(j.aad, buf[j.at - lo : j.at - lo + j.sealed], j.out, j.what) for j in batch]
        )
        return time.perf_counter() - ts

    def _stream_ahead(
        self,
        batches: list[tuple[int, int, list[_SegmentJob]]],
        bufs: list[memoryview],
        start: Callable[[str, int, memoryview], Callable[[], int]],
    ) -> IoStats:
        """The pipeline with the backend's own reader: batch k+1 is copied while batch k is
        decrypted; a read in flight is always waited for before its memory is let go."""
        read_s = decrypt_s = 0.0
        wait: Callable[[], int] | None = None

        def begin(k: int) -> Callable[[], int]:
            lo, hi, _ = batches[k]
            return start(self.blob, lo, bufs[k % 2][: hi - lo])

        def finish(k: int, wait: Callable[[], int]) -> float:
            lo, hi, _ = batches[k]
            ts = time.perf_counter()
            got = wait()
            if got != hi - lo:
                raise TruncatedError(f"{self.what} is truncated: changed while it was read")
            return time.perf_counter() - ts

        try:
            ts = time.perf_counter()
            wait = begin(0)
            read_s += time.perf_counter() - ts
            for k, (lo, _, batch) in enumerate(batches):
                assert wait is not None
                pending, wait = wait, None  # waited for in finish, even when that raises
                read_s += finish(k, pending)
                if k + 1 < len(batches):
                    ts = time.perf_counter()
                    wait = begin(k + 1)  # copies inline when the reader is not available
                    read_s += time.perf_counter() - ts
                decrypt_s += self._decrypt_batch(batch, lo, bufs[k % 2])
        finally:
            if wait is not None:  # the copy must not outlive the memory it writes
                wait()
        return IoStats(read_s=read_s, decrypt_s=decrypt_s)

    def _stream_threaded(
        self, batches: list[tuple[int, int, list[_SegmentJob]]], bufs: list[memoryview]
    ) -> IoStats:
        """The pipeline with a Python reader thread calling ``read_into``."""
        read_s = [0.0]

        def fetch(k: int) -> None:
            lo, hi, _ = batches[k]
            ts = time.perf_counter()
            got = self.backend.read_into(self.blob, lo, bufs[k % 2][: hi - lo])
            read_s[0] += time.perf_counter() - ts
            if got != hi - lo:
                raise TruncatedError(f"{self.what} is truncated: changed while it was read")

        decrypt_s = 0.0
        with ThreadPoolExecutor(1, thread_name_prefix="plinius-restore") as reader:
            pending = reader.submit(fetch, 0)
            for k, (lo, _, batch) in enumerate(batches):
                pending.result()
                if k + 1 < len(batches):
                    pending = reader.submit(fetch, k + 1)
                decrypt_s += self._decrypt_batch(batch, lo, bufs[k % 2])
        return IoStats(read_s=read_s[0], decrypt_s=decrypt_s)


class _SealBatch:
    """Segments to seal, handed to the engine a batch at a time; after each batch the
    transaction hears which range was written (:meth:`WriteTxn.written`)."""

    def __init__(self, txn: WriteTxn, engine: Engine) -> None:
        self.txn = txn
        self.engine = engine
        self.jobs: list[tuple[bytes, Any, memoryview]] = []
        self.pending = 0
        self.lo = -1
        self.hi = 0
        self.seconds = 0.0

    def add(self, aad: bytes, plaintext: Any, at: int, n: int) -> None:
        """Queue sealing ``n`` bytes (-1: all of ``plaintext``) at blob offset ``at``."""
        n = len(plaintext) if n < 0 else n
        self.jobs.append((aad, plaintext, self.txn.view(at, n + OVERHEAD)))
        self.lo = at if self.lo < 0 else self.lo
        self.hi = at + n + OVERHEAD
        self.pending += n
        if self.pending >= _SAVE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.jobs:
            return
        ts = time.perf_counter()
        self.engine.encrypt_many(self.jobs)
        self.seconds += time.perf_counter() - ts
        for _, _, out in self.jobs:
            out.release()
        self.txn.written(self.lo, self.hi - self.lo)
        self.jobs.clear()
        self.pending, self.lo, self.hi = 0, -1, 0


class _SegmentJob(NamedTuple):
    """One sealed segment to open: where it sits in the blob and where its plaintext goes. (A
    NamedTuple: a restore makes one per segment, and a frozen dataclass costs ~4 times as much
    to make.)"""

    at: int
    sealed: int
    aad: bytes
    out: memoryview
    what: str


def _batch_bytes(segment: int) -> int:
    """Plaintext per pipelined restore batch (measured by ``auto`` at this very size)."""
    return restore_batch_bytes(segment)


def _batches(jobs: list[_SegmentJob], target: int) -> list[tuple[int, int, list[_SegmentJob]]]:
    """Consecutive segments grouped into batches of about ``target`` plaintext bytes, each with
    the blob range it spans (started on a page so ciphertexts stay aligned in the buffer)."""
    out: list[tuple[int, int, list[_SegmentJob]]] = []
    cur: list[_SegmentJob] = []
    size = 0
    for j in sorted(jobs, key=lambda j: j.at):
        cur.append(j)
        size += j.sealed
        if size >= target:
            out.append((cur[0].at - cur[0].at % PAGE, cur[-1].at + cur[-1].sealed, cur))
            cur, size = [], 0
    if cur:
        out.append((cur[0].at - cur[0].at % PAGE, cur[-1].at + cur[-1].sealed, cur))
    return out


@dataclass(frozen=True)
class _RestoreLayout:
    """What a restore derives from an authenticated manifest that does not change from restore
    to restore of the same layout (cached by :meth:`MirrorStore._restore_layout`): per record
    its key, dtype and shape (its length checked against them once), and per segment
    ``(AAD prefix, AAD suffix, blob offset, plaintext start, plaintext length, name)`` where
    the segment's associated data is ``prefix | u64 version | run id | save id | suffix``: the
    same bytes as :func:`segment_aad` of :func:`record_aad`, the stamp filled in per restore
    from the authenticated header, so the binding is unchanged."""

    key: tuple[Any, ...]
    records: list[
        tuple[
            tuple[int, str],
            str,
            np.dtype[Any],
            tuple[int, ...],
            list[tuple[bytes, bytes, int, int, int, str]],
        ]
    ]

    @staticmethod
    def key_of(info: MirrorInfo) -> tuple[Any, ...]:
        return (
            info.fingerprint,
            info.segment,
            tuple((e.layer, e.name, e.dtype, e.shape, e.offset, e.length) for e in info.entries),
        )

    @classmethod
    def build(cls, info: MirrorInfo, what: str, key: tuple[Any, ...]) -> _RestoreLayout:
        records = []
        for e in info.entries:
            dtype = np.dtype(e.dtype)
            if int(np.prod(e.shape, dtype=np.int64)) * dtype.itemsize != e.length:
                raise FormatError(f"{what}: record layer {e.layer} {e.name!r} has a wrong length")
            prefix = associated_data(info.fingerprint, e.layer, e.name, 0)[: -_STAMP_AAD.size]
            segs = record_segments(e.offset, e.length, info.segment)
            name = f"{what} layer {e.layer} {e.name}"
            records.append(
                (
                    (e.layer, e.name),
                    e.dtype,
                    dtype,
                    e.shape,
                    [
                        (
                            prefix,
                            segment_aad(b"", i, len(segs), e.length, info.segment),
                            at,
                            start,
                            n,
                            name if len(segs) == 1 else f"{name} segment {i + 1} of {len(segs)}",
                        )
                        for i, (at, start, n) in enumerate(segs)
                    ],
                )
            )
        return cls(key, records)


def _restore_jobs(
    info: MirrorInfo,
    into: Mapping[tuple[int, str], np.ndarray] | None,
    what: str,
    layout: _RestoreLayout | None = None,
) -> tuple[dict[tuple[int, str], np.ndarray], list[_SegmentJob]]:
    """The destination of every record (``into``'s arrays, checked, or new ones) and one job
    per sealed segment, decrypting straight into them. ``layout``: this mirror's, cached."""
    if layout is None:
        layout = _RestoreLayout.build(info, what, ())
    if into is not None:
        wanted = {(e.layer, e.name) for e in info.entries}
        missing = sorted(set(into) - wanted)
        if missing:
            raise ModelMismatchError(f"{what} has no record for {missing[:3]}")
    stamp = _STAMP_AAD.pack(info.version) + info.run_id + info.save_id
    arrays: dict[tuple[int, str], np.ndarray] = {}
    jobs: list[_SegmentJob] = []
    for key, dtype_str, dtype, shape, segs in layout.records:
        dest = into.get(key) if into is not None else None
        if dest is None:
            dest = np.empty(shape, dtype=dtype)
        elif dest.dtype.str != dtype_str or dest.shape != shape:
            raise ModelMismatchError(
                f"{what}: record layer {key[0]} {key[1]!r} is {dtype_str}{list(shape)}, "
                f"the model has {dest.dtype.str}{list(dest.shape)}"
            )
        arrays[key] = dest
        out = as_bytes_view(dest)
        jobs += [
            _SegmentJob(at, n + OVERHEAD, prefix + stamp + suffix, out[start : start + n], name)
            for prefix, suffix, at, start, n, name in segs
        ]
    return arrays, jobs


def _record_jobs(info: MirrorInfo, e: Entry, out: memoryview, what: str) -> list[_SegmentJob]:
    aad = record_aad(info.fingerprint, e.layer, e.name, info.version, info.run_id, info.save_id)
    segs = record_segments(e.offset, e.length, info.segment)
    name = f"{what} layer {e.layer} {e.name}"
    return [
        _SegmentJob(
            at,
            n + OVERHEAD,
            segment_aad(aad, i, len(segs), e.length, info.segment),
            out[start : start + n],
            name if len(segs) == 1 else f"{name} segment {i + 1} of {len(segs)}",
        )
        for i, (at, start, n) in enumerate(segs)
    ]


@dataclass
class OpenedMirror:
    """A stored mirror read once, header and manifest authenticated: what owner tools and
    restores verify and decrypt from, so no step reads the blob again.

    ``data`` is the backend's view of the blob: use it while the backend is open and before
    its next read (file backends reuse their staging memory).
    """

    info: MirrorInfo
    data: memoryview
    read_stats: IoStats
    engine: Engine
    what: str
    open_s: float  # reading the blob and authenticating header and manifest
    layouts: Callable[[MirrorInfo], _RestoreLayout] | None = None  # the store's cache

    def _decrypt(self, jobs: Sequence[_SegmentJob]) -> None:
        data = self.data
        self.engine.decrypt_many(
            [(j.aad, data[j.at : j.at + j.sealed], j.out, j.what) for j in jobs]
        )

    def verify(self) -> MirrorInfo:
        """Authenticate every segment's tag; the plaintext goes to reused scratch memory (a
        batch at a time) and is dropped."""
        info = self.info
        scratch = as_bytes_view(aligned_empty(_batch_bytes(info.segment)))
        jobs: list[_SegmentJob] = []
        for e in info.entries:
            jobs += _record_jobs(info, e, memoryview(bytearray(0)), self.what)
        batch: list[_SegmentJob] = []
        used = 0
        for j in jobs:
            n = j.sealed - OVERHEAD
            if used + n > scratch.nbytes and batch:
                self._decrypt(batch)
                batch, used = [], 0
            if n > scratch.nbytes:  # a format 2 record larger than the scratch
                scratch = as_bytes_view(aligned_empty(n))
            batch.append(_SegmentJob(j.at, j.sealed, j.aad, scratch[used : used + n], j.what))
            used += n
        self._decrypt(batch)
        return info

    def load(self, into: Into = None) -> Restored:
        """Decrypt every record into ``into`` (or new arrays); see :meth:`MirrorStore.load`.
        All segments of all records go to the engine in one call."""
        t0 = time.perf_counter()
        info = self.info
        layout = self.layouts(info) if self.layouts is not None else None
        dests = into(info) if callable(into) else into
        arrays, jobs = _restore_jobs(info, dests, self.what, layout)
        ts = time.perf_counter()
        self._decrypt(jobs)
        decrypt_s = time.perf_counter() - ts
        stats = self.read_stats.merge(IoStats(decrypt_s=decrypt_s))
        stats.bytes = info.size
        stats.total_s = self.open_s + time.perf_counter() - t0
        return Restored(info, arrays, stats)
