"""The owner's encrypted dataset file: every sample sealed on its own, as in the paper.

A sample is one image (``C*H*W`` float32 in [0, 1]) followed by its one-hot label (``classes``
float32), sealed with AES-GCM under the owner's data key; the associated data binds it to the
dataset id, split, index and the split's sample count, so samples cannot be swapped, moved
between splits or datasets, or a split cut short unnoticed. The enclave decrypts only the
samples of each batch.

Layout (format 2): a 4096-byte header (magic ``PLNDATA1``, JSON description: name, id, shape,
classes, counts per split, key id; its last 28 bytes an AES-GCM tag over all the bytes before
it), then the sealed samples of the ``train`` split, then ``test``. The header stays readable
without the key (for display), but every field that changes behaviour is authenticated before
use: the host storing the file cannot cut a split, change the shape or point at other samples.

On-disk names keep the older word "record" (the AAD domain ``plinius-record-v2``) so existing
``.pld`` files still open.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from plinius.core.crypto import OVERHEAD, Engine, check_key_matches
from plinius.core.errors import (
    FormatError,
    NotAMirrorError,
    NotFoundError,
    TruncatedError,
    UnsupportedVersionError,
)
from plinius.core.fsutil import atomic_writer, opened_regular

MAGIC = b"PLNDATA1"
FORMAT_VERSION = 2
HEADER_BYTES = 4096
#: the header tag: AES-GCM of no plaintext, associated data = domain + header bytes before it
HEADER_TAG_AT = HEADER_BYTES - OVERHEAD
HEADER_AAD = b"plinius-dataset-header-v2"
SPLITS = ("train", "test")
_MAX_DIM = 1 << 16
_MAX_COUNT = 1 << 40


def sample_aad(dataset_id: bytes, split: str, index: int, count: int) -> bytes:
    """Associated data of one sealed sample: dataset, split, index and the split's size."""
    # on-disk: the domain keeps "record" so existing .pld files still open
    return b"plinius-record-v2" + dataset_id + split.encode() + struct.pack("<QQ", index, count)


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} {value!r} outside {low}..{high}")
    return value


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
    def from_json(cls, doc: Any) -> DatasetInfo:
        """Parse a header document; ``ValueError`` for anything malformed or out of range."""
        if not isinstance(doc, dict):
            raise ValueError("header is not a JSON object")
        shape = doc["shape"]
        if not isinstance(shape, list) or len(shape) != 3:
            raise ValueError("shape must be [C, H, W]")
        c, h, w = (_int(v, 1, _MAX_DIM, "shape") for v in shape)
        counts = doc["counts"]
        if not isinstance(counts, dict) or set(counts) - set(SPLITS):
            raise ValueError("counts must map train/test to sample counts")
        name = doc["name"]
        if not isinstance(name, str):
            raise ValueError("name must be a string")
        dataset_id = bytes.fromhex(doc["id"])
        key_id = bytes.fromhex(doc["key_id"])
        if len(dataset_id) != 16 or len(key_id) != 8:
            raise ValueError("id and key_id have the wrong length")
        return cls(
            name,
            dataset_id,
            (c, h, w),
            _int(doc["classes"], 1, _MAX_DIM, "classes"),
            {s: _int(counts.get(s, 0), 0, _MAX_COUNT, "count") for s in SPLITS},
            key_id,
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
    """Write ``splits`` (``{"train": (x, labels), "test": (x, labels)}``) sealed sample by sample.

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
    header = seal_header(info, engine)
    plain = np.empty(info.features + classes, np.float32)
    sealed = bytearray(info.sealed_bytes)
    out = memoryview(sealed)
    with atomic_writer(path, mode=0o600) as f:
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
                engine.encrypt_into(sample_aad(info.dataset_id, s, i, counts[s]), plain, out)
                f.write(sealed)
    return info


def seal_header(info: DatasetInfo, engine: Engine) -> bytes:
    """The 4096-byte header of ``info``, its last 28 bytes a tag over the rest (fixed AAD)."""
    head = json.dumps(info.as_json(), sort_keys=True).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head
    if len(body) > HEADER_TAG_AT:
        raise ValueError(f"dataset header of {len(body)} B does not fit in {HEADER_TAG_AT} B")
    body = body.ljust(HEADER_TAG_AT, b"\0")
    tag = bytearray(OVERHEAD)
    engine.encrypt_into(HEADER_AAD + body, b"", memoryview(tag))
    return body + bytes(tag)


def parse_header(header: bytes, what: str, engine: Engine | None) -> DatasetInfo:
    """Check and parse a dataset header (from the file or the backend's copy of it).

    With an ``engine`` the tag over every header byte is checked before anything is used:
    a modified count, shape, id or name raises :class:`IntegrityError` naming ``what``. Without
    one (host-side display only) the fields are parsed but not authenticated.
    """
    if len(header) < len(MAGIC) or header[: len(MAGIC)] != MAGIC:
        raise NotAMirrorError(f"{what} is not a plinius encrypted dataset (bad magic)")
    if len(header) < HEADER_BYTES:
        raise TruncatedError(f"{what} is truncated inside its header")
    if len(header) > HEADER_BYTES:
        raise FormatError(f"{what} has a {len(header)} B header, expected {HEADER_BYTES} B")
    (n,) = struct.unpack("<I", header[8:12])
    doc: Any = None
    if 12 + n <= HEADER_TAG_AT:
        try:
            doc = json.loads(header[12 : 12 + n])
        except ValueError:
            doc = None
    version = doc.get("format", 0) if isinstance(doc, dict) else None
    if type(version) is int and version > FORMAT_VERSION:
        raise UnsupportedVersionError(f"{what} uses format {version}; upgrade plinius")
    if type(version) is int and version < FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"{what} uses format {version}, whose header is not authenticated: re-encrypt the "
            "data with `plinius owner encrypt-data`"
        )
    if engine is not None:
        if isinstance(doc, dict) and isinstance(doc.get("key_id"), str):
            with contextlib.suppress(ValueError):
                check_key_matches(what, bytes.fromhex(doc["key_id"]), engine)
        empty = bytearray(0)
        engine.decrypt_into(
            HEADER_AAD + header[:HEADER_TAG_AT],
            header[HEADER_TAG_AT:],
            memoryview(empty),
            f"header of {what} (name, id, shape, classes, counts)",
        )
    if version != FORMAT_VERSION:
        raise FormatError(f"{what} has a corrupt header")
    try:
        return DatasetInfo.from_json(doc)
    except (KeyError, ValueError, TypeError) as exc:
        raise FormatError(f"{what} has a corrupt header: {exc}") from None


def _read_header(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    try:
        with opened_regular(path, "dataset") as fd:
            return os.pread(fd, HEADER_BYTES, 0), os.fstat(fd).st_size
    except NotFoundError:
        raise NotFoundError(
            f"dataset {os.fspath(path)} does not exist: create it with `plinius owner encrypt-data`"
        ) from None


def read_header(
    path: str | os.PathLike[str], engine: Engine | None = None
) -> tuple[DatasetInfo, bytes]:
    """:func:`read_info` and the raw header bytes (what the backend keeps a copy of)."""
    header, size = _read_header(path)
    what = f"dataset {os.fspath(path)}"
    info = parse_header(header, what, engine)
    need = info.offset("test", info.counts["test"])
    if size < need:
        raise TruncatedError(f"{what} is truncated: {size} B of {need} B")
    if size > need and engine is not None:  # unauthenticated counts prove nothing either way
        raise FormatError(f"{what} has {size - need} B after its last sample")
    return info, header


def read_info(path: str | os.PathLike[str], engine: Engine | None = None) -> DatasetInfo:
    """Parse and check the header; with an engine also the key id and the header's tag.

    Without an engine nothing is authenticated: use the result for display only.
    """
    return read_header(path, engine)[0]


def iter_sealed(path: str | os.PathLike[str], info: DatasetInfo, split: str) -> Iterator[bytes]:
    """The sealed samples of one split, in order, read sequentially (never decrypted here)."""
    with opened_regular(path, "dataset") as fd, os.fdopen(os.dup(fd), "rb") as f:
        f.seek(info.offset(split, 0))
        for _ in range(info.counts[split]):
            rec = f.read(info.sealed_bytes)
            if len(rec) != info.sealed_bytes:
                raise TruncatedError(f"dataset {os.fspath(path)} ends inside a {split} sample")
            yield rec
