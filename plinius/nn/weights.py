"""Darknet's binary ``.weights`` format, read and written so real Darknet can use our files.

Layout (little-endian): int32 ``major``, ``minor``, ``revision``; images ``seen`` as uint64 when
``major*10 + minor >= 2`` (Darknet >= 0.2, what it writes today) else as int32; then, for every
convolutional and connected layer in order, float32 arrays in the order the layer's
``param_specs`` list them (conv: biases, [scales, rolling_mean, rolling_variance], weights;
connected: biases, weights, [scales, rolling_mean, rolling_variance]). Files whose major or minor
is above 1000 store connected weights transposed, which Darknet undoes on load; so do we.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plinius.core.errors import FormatError, NotFoundError, TruncatedError
from plinius.core.fsutil import atomic_writer, read_regular

if TYPE_CHECKING:
    from plinius.nn.network import Network

MAJOR, MINOR, REVISION = 0, 2, 0
_HEAD = struct.Struct("<iii")


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def transposed(self) -> bool:
        return self.major > 1000 or self.minor > 1000

    @property
    def nbytes(self) -> int:
        return _HEAD.size + (8 if self.seen_is_64bit else 4)


def _header_bytes(h: WeightsHeader) -> bytes:
    seen = struct.pack("<Q" if h.seen_is_64bit else "<i", h.seen)
    return _HEAD.pack(h.major, h.minor, h.revision) + seen


def read_header(data: bytes | memoryview, path: str = "<weights>") -> WeightsHeader:
    if len(data) < _HEAD.size + 4:
        raise TruncatedError(f"{path}: {len(data)} bytes is too short for a Darknet weights header")
    major, minor, revision = _HEAD.unpack_from(data, 0)
    if major < 0 or minor < 0 or revision < 0:
        raise FormatError(f"{path}: not a Darknet weights file (version {major}.{minor})")
    wide = major * 10 + minor >= 2
    if wide:
        if len(data) < _HEAD.size + 8:
            raise TruncatedError(f"{path}: header cut short")
        (seen,) = struct.unpack_from("<Q", data, _HEAD.size)
    else:
        (seen,) = struct.unpack_from("<i", data, _HEAD.size)
    return WeightsHeader(major, minor, revision, seen)


def save_weights(net: Network, path: str | Path) -> int:
    """Write ``net``'s parameters as a Darknet ``.weights`` file; returns the bytes written.

    The file holds the model in plaintext, so it is created 0600 (never readable by others) and
    atomically: a planted symlink at ``path`` is replaced, not written through, and a crash
    leaves the old file or the whole new one.
    """
    header = WeightsHeader(MAJOR, MINOR, REVISION, net.seen)
    total = 0
    with atomic_writer(path, mode=0o600) as f:
        total += f.write(_header_bytes(header))
        for _, _, arr in net.param_buffers():
            total += f.write(np.ascontiguousarray(arr, dtype="<f4").data)
    return total


def weights_nbytes(net: Network) -> int:
    """Size of the ``.weights`` file :func:`save_weights` writes."""
    return WeightsHeader(MAJOR, MINOR, REVISION, 0).nbytes + 4 * net.n_params()


def load_weights(net: Network, path: str | Path, *, set_seen: bool = True) -> WeightsHeader:
    """Read a Darknet ``.weights`` file into ``net``'s existing buffers (never reallocated).

    The file must hold exactly the parameters of ``net``'s architecture: a shorter file or extra
    bytes raise, naming the layer where it went wrong.
    """
    p = Path(path)
    try:
        data = read_regular(p, "weights file")
    except NotFoundError:
        raise FormatError(f"{p}: no such weights file") from None
    header = read_header(data, str(p))
    at = header.nbytes
    for layer in net.layers:
        for spec in layer.param_specs():
            dst = layer.params[spec.name]
            nbytes = dst.size * 4
            if at + nbytes > len(data):
                raise TruncatedError(
                    f"{p}: ends inside layer {layer.index} ({layer.kind}) '{spec.name}': "
                    f"needs {at + nbytes} bytes, file has {len(data)}; "
                    "is it for a different .cfg?"
                )
            src = np.frombuffer(data, dtype="<f4", count=dst.size, offset=at)
            if header.transposed and layer.kind == "connected" and spec.name == "weights":
                rows, cols = dst.shape
                src = src.reshape(cols, rows).T
            np.copyto(dst, src.reshape(dst.shape))
            at += nbytes
    if at != len(data):
        raise FormatError(
            f"{p}: {len(data) - at} bytes left after the last layer: the file is for a bigger "
            "model than this .cfg describes"
        )
    if set_seen:
        net.seen = header.seen
    return header
