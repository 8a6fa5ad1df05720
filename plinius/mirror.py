"""The mirroring module: seals a model's buffers into one backend blob and opens them again.

A mirror is one blob (layout in ``docs/FORMAT.md``)::

    [header 128 B][sealed record 0][pad][sealed record 1]...[sealed manifest]

The plaintext header names the format, key id, model fingerprint and version so that wrong keys,
foreign models and newer formats get specific errors before any decryption. The manifest (JSON:
iteration, metadata, and per record layer/name/dtype/shape/offset/length) is sealed with the whole
header as associated data, so no header byte can change unnoticed. Each record is sealed with
associated data binding it to (fingerprint, layer, name, version, run id, save id): records
swapped between layers, models, mirror versions, runs or individual saves (a "frankenstein"
spliced from two mirrors of the same version) fail to open. The run id and save id (random, see
:mod:`plinius.enclave.counter`) are what the platform's freshness record names. Ciphertexts
start on a page (or cache-line) boundary so both sealing and decrypting run on aligned memory.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plinius.backends.base import Backend, IoStats
from plinius.crypto import IV_BYTES, OVERHEAD, Engine, associated_data, check_key_matches
from plinius.errors import (
    FormatError,
    IntegrityError,
    ModelMismatchError,
    NotAMirrorError,
    StaleMirrorError,
    TruncatedError,
    UnsupportedVersionError,
)
from plinius.memory import CACHE_LINE, PAGE, align_up, aligned_empty

MAGIC = b"PLNMIRR\x00"
FORMAT_VERSION = 2
HEADER_SIZE = 128
ID_BYTES = 16
# magic, format, header size, flags, key id, version, fingerprint, blob size,
# manifest offset, manifest sealed length, record count, run id, save id
_HEADER = struct.Struct(f"<8sHHI8sQ32sQQII{ID_BYTES}s{ID_BYTES}s")
MANIFEST_LAYER = -1
MANIFEST_NAME = "__manifest__"
DEFAULT_BLOB = "mirror"


@dataclass(frozen=True)
class Record:
    """One buffer to mirror: a C-contiguous array, sealed in place."""

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

    @property
    def metadata_bytes(self) -> int:
        """Encryption metadata of this mirror (see :func:`metadata_bytes`)."""
        return metadata_bytes(len(self.entries))


def header_stamp(data: memoryview) -> tuple[bytes, int, bytes] | None:
    """(run id, version, save id) a stored mirror's plaintext header names; None if it is not
    one. Unauthenticated: for copying sealed bytes elsewhere (replicas) without opening them."""
    if data.nbytes < HEADER_SIZE:
        return None
    fields = _HEADER.unpack(bytes(data[: _HEADER.size]))
    if fields[0] != MAGIC:
        return None
    return fields[11], fields[5], fields[12]


def metadata_bytes(n_records: int) -> int:
    """Encryption metadata of a mirror of ``n_records`` buffers: 28 B (IV + tag) for each and
    for the manifest. The one place this size is computed (reports, ``verify``, the trainer)."""
    return OVERHEAD * (n_records + 1)


@dataclass
class Restored:
    info: MirrorInfo
    arrays: dict[tuple[int, str], np.ndarray]
    stats: IoStats = field(default_factory=IoStats)


def _ct_align(length: int) -> int:
    return PAGE if length >= PAGE else CACHE_LINE


def plan(records: Sequence[Record]) -> tuple[list[Entry], int]:
    """Offsets of each sealed record (ciphertext aligned) and where the manifest starts."""
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
        offset = align_up(cursor + IV_BYTES, _ct_align(n)) - IV_BYTES
        entries.append(Entry(r.layer, r.name, r.array.dtype.str, r.array.shape, offset, n))
        cursor = offset + n + OVERHEAD
    return entries, cursor


def _manifest_aad(fingerprint: bytes, header: bytes, version: int) -> bytes:
    return associated_data(fingerprint, MANIFEST_LAYER, MANIFEST_NAME, version) + header


def record_aad(
    fingerprint: bytes, layer: int, name: str, version: int, run_id: bytes, save_id: bytes
) -> bytes:
    """Associated data of one record: binds it to its model, place, version, run and save."""
    return associated_data(fingerprint, layer, name, version) + run_id + save_id


Freshness = Callable[[MirrorInfo], None]


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


class MirrorStore:
    """Seals named arrays of one model into one blob of a backend, and opens them again."""

    def __init__(
        self, backend: Backend, engine: Engine, fingerprint: bytes | None, blob: str = DEFAULT_BLOB
    ) -> None:
        """``fingerprint=None`` opens whatever model the mirror holds (owner tools: export)."""
        if fingerprint is not None and len(fingerprint) != 32:
            raise ValueError("model fingerprint must be 32 bytes (SHA-256)")
        self.backend = backend
        self.engine = engine
        self.fingerprint = fingerprint
        self.blob = blob
        self._plan_cache: tuple[tuple[Any, ...], list[Entry], int] | None = None

    @property
    def what(self) -> str:
        """How errors and the freshness record name this mirror: ``mirror SPEC/KEY``."""
        return f"mirror {self.backend.spec}/{self.blob}"

    # --- save --------------------------------------------------------------------------------

    def _plan(self, records: Sequence[Record]) -> tuple[list[Entry], int]:
        sig = tuple((r.layer, r.name, r.array.dtype.str, r.array.shape) for r in records)
        if self._plan_cache is None or self._plan_cache[0] != sig:
            entries, manifest_at = plan(records)
            self._plan_cache = (sig, entries, manifest_at)
        return self._plan_cache[1], self._plan_cache[2]

    def save(
        self,
        records: Sequence[Record],
        version: int,
        iteration: int = 0,
        meta: Mapping[str, Any] | None = None,
        *,
        run_id: bytes | None = None,
        save_id: bytes | None = None,
    ) -> IoStats:
        """Replace the stored mirror atomically by a new one at ``version``.

        ``run_id`` and ``save_id`` (random when not given) are the stamp the platform's
        freshness record names; the enclave passes the ones it registered with ``begin``.
        """
        if version < 0:
            raise ValueError("mirror version must be >= 0")
        run_id = os.urandom(ID_BYTES) if run_id is None else run_id
        save_id = os.urandom(ID_BYTES) if save_id is None else save_id
        if len(run_id) != ID_BYTES or len(save_id) != ID_BYTES:
            raise ValueError(f"run and save ids must be {ID_BYTES} bytes")
        if self.fingerprint is None:
            raise ValueError("saving needs the model fingerprint")
        fingerprint = self.fingerprint
        t0 = time.perf_counter()
        entries, manifest_at = self._plan(records)
        manifest = _manifest_bytes(version, iteration, fingerprint, meta or {}, entries)
        total = manifest_at + len(manifest) + OVERHEAD
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            HEADER_SIZE,
            0,
            self.engine.key_id,
            version,
            fingerprint,
            total,
            manifest_at,
            len(manifest) + OVERHEAD,
            len(entries),
            run_id,
            save_id,
        ).ljust(HEADER_SIZE, b"\0")
        encrypt_s = 0.0
        with self.backend.begin_write(self.blob, total) as txn:
            txn.view(0, HEADER_SIZE)[:] = header
            for rec, e in zip(records, entries, strict=True):
                out = txn.view(e.offset, e.length + OVERHEAD)
                aad = record_aad(fingerprint, e.layer, e.name, version, run_id, save_id)
                ts = time.perf_counter()
                self.engine.encrypt_into(aad, rec.array, out)
                encrypt_s += time.perf_counter() - ts
                out.release()
            ts = time.perf_counter()
            mout = txn.view(manifest_at, len(manifest) + OVERHEAD)
            self.engine.encrypt_into(_manifest_aad(fingerprint, header, version), manifest, mout)
            mout.release()
            encrypt_s += time.perf_counter() - ts
            io = txn.commit()
        io.encrypt_s += encrypt_s
        io.bytes = total
        io.total_s = time.perf_counter() - t0
        return io

    # --- open --------------------------------------------------------------------------------

    def _open_info(
        self,
        data: memoryview,
        min_version: int | None,
        freshness: Freshness | None = None,
        size: int | None = None,
    ) -> MirrorInfo:
        """``data``: the whole blob; or, with ``size`` (the blob's), only its header, and the
        manifest is then read by range (a peek that never moves the records)."""
        what = self.what
        nbytes = data.nbytes if size is None else size
        if nbytes < HEADER_SIZE:
            if nbytes >= len(MAGIC) and bytes(data[: len(MAGIC)]) == MAGIC:
                raise TruncatedError(
                    f"{what} is truncated: {nbytes} B, shorter than its {HEADER_SIZE} B header"
                )
            raise NotAMirrorError(f"{what} is not a plinius mirror ({nbytes} B, no header)")
        header = bytes(data[:HEADER_SIZE])
        (
            magic,
            fmt,
            hsize,
            _flags,
            kid,
            version,
            fp,
            total,
            m_at,
            m_len,
            count,
            run_id,
            save_id,
        ) = _HEADER.unpack(header[: _HEADER.size])
        if magic != MAGIC:
            raise NotAMirrorError(f"{what} is not a plinius mirror (magic {magic!r})")
        if fmt > FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"{what} uses mirror format {fmt}, this plinius reads up to {FORMAT_VERSION}: "
                "upgrade plinius"
            )
        if fmt < FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"{what} uses mirror format {fmt}, which binds no run or save id, so its "
                "freshness cannot be proven: start over with --fresh"
            )
        if hsize != HEADER_SIZE or m_len < OVERHEAD or m_at + m_len != total:
            raise FormatError(f"{what} has an inconsistent header (corrupt file)")
        if nbytes < total:
            raise TruncatedError(f"{what} is truncated: {nbytes} B of {total} B")
        check_key_matches(what, kid, self.engine)
        if self.fingerprint is not None and fp != self.fingerprint:
            raise ModelMismatchError(
                f"{what} belongs to model {fp.hex()}, not to this model "
                f"{self.fingerprint.hex()}: use the model it was trained with, or --fresh"
            )
        if min_version is not None and version < min_version:
            raise StaleMirrorError(what, version, min_version)
        manifest = bytearray(m_len - OVERHEAD)
        sealed = data[m_at:total] if size is None else self._read_range(m_at, m_len)
        self.engine.decrypt_into(
            _manifest_aad(fp, header, version), sealed, manifest, f"{what} manifest"
        )
        doc = json.loads(manifest)
        entries = [
            Entry(r["layer"], r["name"], r["dtype"], tuple(r["shape"]), r["offset"], r["length"])
            for r in doc["records"]
        ]
        if len(entries) != count or doc["version"] != version:
            raise IntegrityError(f"{what} manifest", "disagrees with the header")
        for e in entries:
            if e.offset < HEADER_SIZE or e.offset + e.length + OVERHEAD > m_at:
                raise IntegrityError(f"{what} manifest", f"record {e.name} out of bounds")
        info = MirrorInfo(
            version, doc["iteration"], fp, doc["meta"], entries, total, run_id, save_id
        )
        if freshness is not None:
            freshness(info)
        return info

    def peek(
        self, min_version: int | None = None, freshness: Freshness | None = None
    ) -> MirrorInfo | None:
        """Authenticate the header and manifest only (records stay sealed); None if no mirror.

        A backend with ranged reads moves only the header and the manifest, not the records.
        """
        if not self.backend.ranged_read:
            blob = self.backend.read(self.blob)
            if blob is None:
                return None
            return self._open_info(blob.data, min_version, freshness)
        probe = self.backend.read(self.blob, 0, 0)  # the blob's size, no bytes
        if probe is None:
            return None
        head = self._read_range(0, min(probe.size, HEADER_SIZE))
        return self._open_info(head, min_version, freshness, size=probe.size)

    def _read_range(self, offset: int, length: int) -> memoryview:
        blob = self.backend.read(self.blob, offset, length)
        if blob is None:
            raise NotAMirrorError(f"{self.what} was deleted while it was read")
        return blob.data

    def open(
        self, min_version: int | None = None, freshness: Freshness | None = None
    ) -> OpenedMirror | None:
        """Read the blob once and authenticate its header and manifest (checked fresh); the
        records stay sealed until :meth:`OpenedMirror.verify` or :meth:`OpenedMirror.load`,
        which use this same read. None if no mirror was ever saved."""
        t0 = time.perf_counter()
        blob = self.backend.read(self.blob)
        if blob is None:
            return None
        info = self._open_info(blob.data, min_version, freshness)
        return OpenedMirror(
            info, blob.data, blob.stats, self.engine, self.what, time.perf_counter() - t0
        )

    def verify(
        self, min_version: int | None = None, freshness: Freshness | None = None
    ) -> MirrorInfo | None:
        """Authenticate the whole mirror (every record's tag) without touching any model."""
        opened = self.open(min_version, freshness)
        return None if opened is None else opened.verify()

    def load(
        self,
        into: Mapping[tuple[int, str], np.ndarray] | None = None,
        min_version: int | None = None,
        freshness: Freshness | None = None,
    ) -> Restored | None:
        """Open the last committed mirror; decrypt every record into ``into`` (or new arrays).

        Returns None when no mirror was ever saved. Raises a specific error on anything else.
        On an integrity error the destination arrays hold unspecified bytes: restore into the
        model only at start-up, and re-initialise it if this raises.
        """
        opened = self.open(min_version, freshness)
        return None if opened is None else opened.load(into)


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

    def _open_record(self, e: Entry, dest: Any) -> None:
        info = self.info
        self.engine.decrypt_into(
            record_aad(info.fingerprint, e.layer, e.name, info.version, info.run_id, info.save_id),
            self.data[e.offset : e.offset + e.length + OVERHEAD],
            dest,
            f"{self.what} layer {e.layer} {e.name}",
        )

    def verify(self) -> MirrorInfo:
        """Authenticate every record's tag; the plaintext goes to scratch memory and is dropped."""
        scratch = aligned_empty(max((e.length for e in self.info.entries), default=0))
        for e in self.info.entries:
            self._open_record(e, scratch[: e.length])
        return self.info

    def load(self, into: Mapping[tuple[int, str], np.ndarray] | None = None) -> Restored:
        """Decrypt every record into ``into`` (or new arrays); see :meth:`MirrorStore.load`."""
        t0 = time.perf_counter()
        info, what = self.info, self.what
        arrays: dict[tuple[int, str], np.ndarray] = {}
        if into is not None:
            wanted = {(e.layer, e.name) for e in info.entries}
            missing = sorted(set(into) - wanted)
            if missing:
                raise ModelMismatchError(f"{what} has no record for {missing[:3]}")
        decrypt_s = 0.0
        for e in info.entries:
            dest = into.get((e.layer, e.name)) if into is not None else None
            if dest is None:
                dest = np.empty(e.shape, dtype=np.dtype(e.dtype))
            elif dest.dtype.str != e.dtype or dest.shape != e.shape:
                raise ModelMismatchError(
                    f"{what}: record layer {e.layer} {e.name!r} is {e.dtype}{list(e.shape)}, "
                    f"the model has {dest.dtype.str}{list(dest.shape)}"
                )
            ts = time.perf_counter()
            self._open_record(e, dest)
            decrypt_s += time.perf_counter() - ts
            arrays[(e.layer, e.name)] = dest
        stats = self.read_stats.merge(IoStats(decrypt_s=decrypt_s))
        stats.bytes = info.size
        stats.total_s = self.open_s + time.perf_counter() - t0
        return Restored(info, arrays, stats)
