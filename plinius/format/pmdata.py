"""The PM-data module: the encrypted training set kept byte-addressable in the backend.

Loaded once from the owner's file into the backend's sample area (in the pool for ``romulus``),
still sealed sample by sample; each iteration reads and decrypts only the samples of its batch.
After a crash the area is already there: a restart reloads nothing from disk.

The backend keeps, under ``dataset.<id>``, a byte copy of the file's authenticated 4096-byte
header; it is re-authenticated with the data key whenever it is used, and each sample area's
header (sample size, count, name) must match it, so storage cannot shorten a split or point the
reader at other samples.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from plinius.backends.base import Backend, Blob
from plinius.core.crypto import Engine
from plinius.core.errors import FormatError, IntegrityError, NotFoundError
from plinius.format.encdata import (
    HEADER_BYTES,
    DatasetInfo,
    iter_sealed,
    parse_header,
    read_header,
    sample_aad,
)
from plinius.format.samples import SampleArea, area_bytes, area_key, area_size, put_samples


def _info_key(dataset_id: bytes) -> str:
    return f"dataset.{dataset_id.hex()}"


def _area_name(info: DatasetInfo, split: str) -> str:
    return f"{info.dataset_id.hex()}-{split}"


@dataclass
class LoadReport:
    """How the training set got into the backend this time."""

    reloaded: bool  # True when samples were copied from the file now
    seconds: float
    samples: int
    bytes: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _read_header_blob(backend: Backend, key: str, what: str) -> Blob | None:
    """A stored dataset header, read only when it has the one size a header has (the stored
    size is the attacker's: it never sizes the read)."""
    if backend.ranged_read:
        probe = backend.read(key, 0, 0)
        if probe is None:
            return None
        if probe.size != HEADER_BYTES:
            raise FormatError(f"{what} is {probe.size} B; a dataset header is {HEADER_BYTES} B")
        return backend.read(key, 0, HEADER_BYTES)
    return backend.read(key)


def _area_whole(backend: Backend, info: DatasetInfo, split: str) -> bool:
    """The stored area of ``split`` has the size the authenticated header gives it (or the
    backend cannot tell without reading it)."""
    size = area_size(backend, _area_name(info, split), info.sealed_bytes, info.counts[split])
    need = area_bytes(_area_name(info, split), info.sealed_bytes, info.counts[split])
    return size is None or size == need


class PMData:
    """Random access to one split of an encrypted dataset stored in a backend."""

    def __init__(self, backend: Backend, engine: Engine, info: DatasetInfo, split: str) -> None:
        self.backend = backend
        self.engine = engine
        self.info = info
        self.split = split
        self.area = SampleArea(
            backend, _area_name(info, split), (info.sealed_bytes, info.counts[split])
        )
        what = f"{split} sample area of dataset {info.name} in {backend.spec}"
        if self.area.sample_size != info.sealed_bytes:
            raise IntegrityError(
                what,
                f"sample size {self.area.sample_size} B differs from the authenticated dataset "
                f"header ({info.sealed_bytes} B)",
            )
        if len(self.area) != info.counts[split]:
            raise IntegrityError(
                what,
                f"sample count {len(self.area)} differs from the authenticated dataset header "
                f"({info.counts[split]})",
            )
        self._count = info.counts[split]
        self._rows = np.empty((0, info.features + info.classes), np.float32)
        self._sealed = memoryview(bytearray(info.sealed_bytes))  # one private sample

    def __len__(self) -> int:
        return len(self.area)

    @classmethod
    def stored(cls, backend: Backend, engine: Engine, dataset_id: bytes, split: str) -> PMData:
        """Open a dataset already in the backend, without its file."""
        what = f"dataset {dataset_id.hex()} header in {backend.spec}"
        blob = _read_header_blob(backend, _info_key(dataset_id), what)
        if blob is None:
            raise NotFoundError(f"dataset {dataset_id.hex()} is not stored in {backend.spec}")
        info = parse_header(bytes(blob.data), what, engine)
        if info.dataset_id != dataset_id:
            raise IntegrityError(what, f"it describes dataset {info.dataset_id.hex()}")
        return cls(backend, engine, info, split)

    @classmethod
    def ensure_loaded(
        cls,
        backend: Backend,
        engine: Engine,
        path: str | os.PathLike[str],
        splits: tuple[str, ...] = ("train",),
        force: bool = False,
    ) -> tuple[dict[str, PMData], LoadReport]:
        """Put the file's splits into the backend unless they are already there."""
        t0 = time.perf_counter()
        info, header = read_header(path, engine)
        keys = set(backend.blobs())
        try:
            stored = _read_header_blob(backend, _info_key(info.dataset_id), "stored header")
        except FormatError:
            stored = None  # altered: replaced from the owner's file below
        # present only when the backend holds this very (authenticated) header: anything else,
        # an older format, another copy or a modified one, is replaced from the owner's file
        present = (
            stored is not None
            and bytes(stored.data) == header
            and all(area_key(_area_name(info, s)) in keys for s in splits)
            and all(_area_whole(backend, info, s) for s in splits)
        )
        moved = 0
        if force or not present:
            for s in splits:
                put_samples(
                    backend,
                    _area_name(info, s),
                    iter_sealed(path, info, s),
                    info.sealed_bytes,
                    info.counts[s],
                )
                moved += info.counts[s]
            with backend.begin_write(_info_key(info.dataset_id), len(header)) as txn:
                txn.view(0, len(header))[:] = header
                txn.commit()
        out = {s: cls(backend, engine, info, s) for s in splits}
        report = LoadReport(
            reloaded=moved > 0,
            seconds=time.perf_counter() - t0,
            samples=moved,
            bytes=moved * info.sealed_bytes,
        )
        return out, report

    def read_batch(self, indices: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Decrypt samples ``indices`` into ``x`` (batch, features) and ``y`` (batch, classes)."""
        n = len(indices)
        if self._rows.shape[0] < n:
            self._rows = np.empty((n, self.info.features + self.info.classes), np.float32)
        rows = self._rows
        sealed = self._sealed
        for j, i in enumerate(indices):
            i = int(i)
            # the area is a view of storage the attacker can write: the sample is copied to
            # private memory once, so its tag pass and its decrypt pass read the same bytes
            sealed[:] = self.area[i]
            self.engine.decrypt_into(
                sample_aad(self.info.dataset_id, self.split, i, self._count),
                sealed,
                rows[j],
                f"{self.split} sample {i} of dataset {self.info.name}",
            )
        f = self.info.features
        x[:n] = rows[:n, :f]
        y[:n] = rows[:n, f:]
