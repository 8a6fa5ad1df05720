"""What the enclave needs from a model: the protocols it mirrors and trains through.

The enclave seals whatever buffers a model lists and decrypts them straight back into them, so it
never needs to know how a model keeps its memory: the Darknet network (``nn.Network``, every
buffer a view into one arena) and an adapter around another framework (parameters, buffers and
optimizer state as many separate arrays) implement the same few methods. The mirror's record
order, names and manifest come from here, so an implementation must keep them stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from plinius.core.memory import CACHE_LINE, PAGE, align_up

#: ``(layer index, name, array)``: one buffer of a model, named as the mirror records it
NamedBuffer = tuple[int, str, np.ndarray]


@runtime_checkable
class Mirrorable(Protocol):
    """A model the enclave can mirror (seal, persist, restore bit-identically)."""

    def fingerprint(self) -> bytes:
        """SHA-256 (32 B) of the architecture: what the buffers mean, not their values.

        A mirror restores only into a model with the same fingerprint.
        """
        ...

    def mirror_buffers(self) -> list[NamedBuffer]:
        """Every buffer to persist, in a stable order, each C-contiguous.

        Restoring decrypts into these very arrays, so they must be the model's own memory.
        """
        ...

    @property
    def iteration(self) -> int:
        """Training steps done (recorded in the mirror's manifest)."""
        ...

    def training_state(self) -> dict[str, Any]:
        """Everything besides the buffers the next step depends on (JSON-serialisable):
        step counters, RNG states, schedules."""
        ...

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`training_state` returned (after the buffers were restored)."""
        ...

    def snapshot_nbytes(self) -> int:
        """Bytes :meth:`snapshot_into` needs (the asynchronous mirror allocates them once)."""
        ...

    def snapshot_into(self, out: np.ndarray) -> list[NamedBuffer]:
        """Copy every buffer into ``out`` (uint8, at least :meth:`snapshot_nbytes`, page-aligned)
        and return views of the copies, named and ordered as :meth:`mirror_buffers`."""
        ...

    # Optional: ``prepare_restore(training_state)``, called by a restore once the mirror's
    # authenticated manifest is known and before :meth:`mirror_buffers` is read, so a model
    # whose state is created lazily (a PyTorch optimizer's) allocates what the mirror holds.


@runtime_checkable
class Trainable(Mirrorable, Protocol):
    """A mirrorable model the enclave also trains and runs on batches of flat float32 images."""

    @property
    def batch(self) -> int:
        """Images per training step."""
        ...

    @property
    def inputs(self) -> int:
        """Values per image."""
        ...

    @property
    def outputs(self) -> int:
        """Classes (one-hot width of a label)."""
        ...

    @property
    def avg_loss(self) -> float:
        """Running average of the training loss (reported with every step)."""
        ...

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimisation step on ``batch`` images and one-hot labels; the batch's loss."""
        ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n, outputs)`` scores for any number of images."""
        ...


def _buffer_align(nbytes: int) -> int:
    return PAGE if nbytes >= PAGE else CACHE_LINE


def packed_offsets(buffers: Sequence[NamedBuffer]) -> tuple[list[int], int]:
    """Where each buffer goes when packed one after another (page- or cache-line-aligned as the
    mirror aligns ciphertexts), and the total bytes."""
    offsets: list[int] = []
    off = 0
    for _, _, arr in buffers:
        off = align_up(off, _buffer_align(arr.nbytes))
        offsets.append(off)
        off += arr.nbytes
    return offsets, off


def check_snapshot_out(out: np.ndarray, nbytes: int) -> None:
    """Refuse a snapshot destination that is not a big enough flat byte buffer."""
    if out.dtype != np.uint8 or out.ndim != 1 or not out.flags.c_contiguous:
        raise ValueError("a snapshot goes into a flat, C-contiguous uint8 buffer")
    if out.nbytes < nbytes:
        raise ValueError(f"a snapshot needs {nbytes} B, the buffer has {out.nbytes} B")


def view_at(out: np.ndarray, offset: int, like: np.ndarray) -> np.ndarray:
    """``out[offset:]`` seen as an array of ``like``'s dtype and shape (no copy)."""
    raw = out[offset : offset + like.nbytes]
    arr: np.ndarray = raw.view(like.dtype).reshape(like.shape)
    return arr


def pack_into(buffers: Sequence[NamedBuffer], out: np.ndarray) -> list[NamedBuffer]:
    """Snapshot separate arrays: copy each into ``out`` at :func:`packed_offsets`; the views.

    The default :meth:`Mirrorable.snapshot_into` of a model whose buffers are not one arena.
    """
    offsets, total = packed_offsets(buffers)
    check_snapshot_out(out, total)
    views: list[NamedBuffer] = []
    for (layer, name, arr), off in zip(buffers, offsets, strict=True):
        dst = view_at(out, off, arr)
        np.copyto(dst, arr)
        views.append((layer, name, dst))
    return views


__all__ = [
    "Mirrorable",
    "NamedBuffer",
    "Trainable",
    "check_snapshot_out",
    "pack_into",
    "packed_offsets",
    "view_at",
]
