"""The owner's encrypted dataset file: every record sealed on its own, as in the paper.

A record is one image (``C*H*W`` float32 in [0, 1]) followed by its one-hot label (``classes``
float32), sealed with AES-GCM under the owner's data key; the associated data binds it to the
dataset id, split and index, so records cannot be swapped, moved between splits or between
datasets unnoticed. The enclave decrypts only the records of each batch.

Layout: a 4096-byte header (magic ``PLNDATA1``, JSON description: name, id, shape, classes,
counts per split, key id), then the sealed records of the ``train`` split, then ``test``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plinius.crypto import OVERHEAD, Engine, check_key_matches
from plinius.errors import (
    FormatError,
    NotAMirrorError,
    NotFoundError,
    TruncatedError,
    UnsupportedVersionError,
)

MAGIC = b"PLNDATA1"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
SPLITS = ("train", "test")


def record_aad(dataset_id: bytes, split: str, index: int) -> bytes:
    return b"plinius-record-v1" + dataset_id + split.encode() + struct.pack("<Q", index)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    dataset_id: bytes
    shape: tuple[int, int, int]  # C, H, W
    classes: int
    counts: dict[str, int]
    key_id: bytes

    @property
    def features(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def plain_bytes(self) -> int:
        return 4 * (self.features + self.classes)

    @property
    def sealed_bytes(self) -> int:
        return self.plain_bytes + OVERHEAD

    def offset(self, split: str, index: int) -> int:
        before = 0
        for s in SPLITS:
            if s == split:
                break
            before += self.counts[s]
        return HEADER_BYTES + (before + index) * self.sealed_bytes

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DatasetInfo:
        c, h, w = doc["shape"]
        return cls(
            doc["name"],
            bytes.fromhex(doc["id"]),
            (c, h, w),
            int(doc["classes"]),
            {s: int(doc["counts"].get(s, 0)) for s in SPLITS},
            bytes.fromhex(doc["key_id"]),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "id": self.dataset_id.hex(),
            "shape": list(self.shape),
            "classes": self.classes,
            "counts": self.counts,
            "key_id": self.key_id.hex(),
        }


def encrypt_dataset(
    path: str | os.PathLike[str],
    engine: Engine,
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int, int],
    classes: int,
) -> DatasetInfo:
    """Write ``splits`` (``{"train": (x, labels), "test": (x, labels)}``) sealed record by record.

    ``x`` rows are flattened images (float32 in [0, 1]); ``labels`` are integer class ids.
    The file is written to a temporary name and renamed, so a crash never leaves half a dataset.
    """
    counts = {s: int(splits[s][0].shape[0]) if s in splits else 0 for s in SPLITS}
    digest = hashlib.sha256(name.encode())
    for s in SPLITS:
        if s in splits:
            x, y = splits[s]
            digest.update(np.ascontiguousarray(x, np.float32).tobytes())
            digest.update(np.asarray(y, np.int64).tobytes())
    info = DatasetInfo(name, digest.digest()[:16], shape, classes, counts, engine.key_id)
    head = json.dumps(info.as_json()).encode()
    header = (MAGIC + struct.pack("<I", len(head)) + head).ljust(HEADER_BYTES, b"\0")
    p = Path(path)
    tmp = p.with_name(f"{p.name}.tmp-{os.getpid()}")
    plain = np.empty(info.features + classes, np.float32)
    sealed = bytearray(info.sealed_bytes)
    out = memoryview(sealed)
    with open(tmp, "wb") as f:
        f.write(header)
        for s in SPLITS:
            if s not in splits:
                continue
            x, y = splits[s]
            x = np.asarray(x, np.float32).reshape(counts[s], -1)
            if x.shape[1] != info.features:
                raise ValueError(f"{s}: images have {x.shape[1]} values, shape says {shape}")
            for i in range(counts[s]):
                plain[: info.features] = x[i]
                plain[info.features :] = 0.0
                plain[info.features + int(y[i])] = 1.0
                engine.seal_into(record_aad(info.dataset_id, s, i), plain, out)
                f.write(sealed)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, p)
    return info


def read_info(path: str | os.PathLike[str], engine: Engine | None = None) -> DatasetInfo:
    """Parse and check the header (and the key id, when an engine is given)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            header = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise NotFoundError(
            f"dataset {p} does not exist: create it with `plinius owner encrypt-data`"
        ) from None
    if not header.startswith(MAGIC):
        raise NotAMirrorError(f"{p} is not a plinius encrypted dataset (bad magic)")
    if len(header) < HEADER_BYTES:
        raise TruncatedError(f"dataset {p} is truncated inside its header")
    (n,) = struct.unpack("<I", header[8:12])
    try:
        doc = json.loads(header[12 : 12 + n])
    except ValueError:
        raise FormatError(f"dataset {p} has a corrupt header") from None
    if doc.get("format", 0) > FORMAT_VERSION:
        raise UnsupportedVersionError(f"dataset {p} uses format {doc['format']}; upgrade plinius")
    try:
        info = DatasetInfo.from_json(doc)
    except (KeyError, ValueError, TypeError):
        raise FormatError(f"dataset {p} has a corrupt header") from None
    need = info.offset("test", info.counts["test"])
    if size < need:
        raise TruncatedError(f"dataset {p} is truncated: {size} B of {need} B")
    if engine is not None:
        check_key_matches(f"dataset {p}", info.key_id, engine)
    return info


def iter_sealed(path: str | os.PathLike[str], info: DatasetInfo, split: str) -> Iterator[bytes]:
    """The sealed records of one split, in order, read sequentially (never decrypted here)."""
    with open(path, "rb") as f:
        f.seek(info.offset(split, 0))
        for _ in range(info.counts[split]):
            rec = f.read(info.sealed_bytes)
            if len(rec) != info.sealed_bytes:
                raise TruncatedError(f"dataset {path} ends inside a {split} record")
            yield rec
