"""Reusable host buffers for tensors that cannot be sealed in place.

A contiguous CPU tensor is its own record (a NumPy view of its storage). A non-contiguous one, or
one on an accelerator, is copied into a host buffer kept for the next save: allocated once per
record, pinned when the tensor lives on a device (so the copy is a DMA, not a bounce through
pageable memory). The device copies and the allocation are injectable: the tests drive the
accelerator path with a fake device on a machine that has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from plinius.torch.codec import record_view

#: ``copy(dst, src)``: copy ``src`` into ``dst`` (same shape and dtype), finished on return
Copy = Callable[[torch.Tensor, torch.Tensor], None]
#: ``alloc(shape, dtype, pinned)``: a new contiguous CPU tensor
Alloc = Callable[[tuple[int, ...], torch.dtype, bool], torch.Tensor]


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src)  # synchronous: a device-to-pinned copy returns when the bytes are there


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    pin = pinned and torch.cuda.is_available()
    return torch.empty(shape, dtype=dtype, pin_memory=pin)


def _on_host(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


@dataclass
class Staging:
    """Host views of tensors: the tensor's own memory when possible, else a kept buffer."""

    to_host: Copy = _copy
    to_device: Copy = _copy
    alloc: Alloc = _alloc
    on_host: Callable[[torch.Tensor], bool] = _on_host
    _buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    #: bytes copied through staging buffers since creation (what zero copy avoids)
    staged_bytes: int = 0

    def direct(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is sealed straight from its own storage."""
        return self.on_host(t) and t.is_contiguous()

    def buffer(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """The kept host buffer of ``key`` for a tensor like ``t`` (in its record dtype)."""
        src = record_view(t)
        buf = self._buffers.get(key)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = self.alloc(tuple(src.shape), src.dtype, not self.on_host(t))
            self._buffers[key] = buf
        return buf

    def host_array(self, key: str, t: torch.Tensor, *, fill: bool = True) -> np.ndarray:
        """A C-contiguous array holding ``t``'s bytes: a view of ``t`` itself, or the staged
        copy (``fill=False``: the buffer only, as a destination to decrypt into)."""
        if self.direct(t):
            arr: np.ndarray = record_view(t).numpy()
            if arr.flags.c_contiguous:
                return arr
        buf = self.buffer(key, t)
        if fill:
            self.to_host(buf, record_view(t))
            self.staged_bytes += buf.nbytes
        out: np.ndarray = buf.numpy()
        return out

    def copy_into(self, dst: np.ndarray, t: torch.Tensor) -> None:
        """``t``'s bytes into ``dst`` (a snapshot slot): one copy from wherever ``t`` lives."""
        src = record_view(t)
        if self.on_host(t):
            torch.from_numpy(dst).copy_(src)
        else:
            self.to_host(torch.from_numpy(dst), src)
            self.staged_bytes += dst.nbytes

    def write_back(self, key: str, t: torch.Tensor) -> None:
        """After a restore: the staged bytes of ``key`` back into ``t`` (no-op when direct)."""
        if self.direct(t) and record_view(t).numpy().flags.c_contiguous:
            return
        buf = self._buffers[key]
        dst = record_view(t)
        if self.on_host(t):
            dst.copy_(buf)
        else:
            self.to_device(dst, buf)

    def release(self) -> None:
        """Drop every kept buffer."""
        self._buffers.clear()


__all__ = ["Alloc", "Copy", "Staging"]
