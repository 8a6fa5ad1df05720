"""What every layer provides to the network.

Activations travel between layers as ``(C, H, W, B)`` arrays: channel-major, batch innermost.
Every channel is then one contiguous run over the whole batch, so a convolution is a single large
matrix product ``W (F x C*k*k) @ col (C*k*k x H*W*B)`` whose result is already the next layer's
input, batch-norm statistics are contiguous row reductions, im2col and pooling move whole
``W*B`` runs, and a connected layer's ``(C*H*W, B)`` input (Darknet's flattening order) is a plain
reshape. The network transposes the user's ``(B, C*H*W)`` images at the input and the
``(classes, B)`` output back.

Layers own their output and input-gradient buffers, allocated once per batch size and reused every
iteration (fresh large allocations are slow on these VMs). ``backward`` may overwrite the ``dy``
it is given: it belongs to the next layer, which no longer needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class ParamSpec:
    """A Darknet-named parameter buffer; ``trainable`` ones get a momentum buffer."""

    name: str
    shape: tuple[int, ...]
    trainable: bool = True
    decay: bool = False  # weight decay applies (weights only, as in Darknet)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Workspace:
    """Scratch arrays shared by all layers of a network (used only within one call)."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        size = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.zeros(size, dtype)
            self._bufs[name] = buf
        return buf[:size].reshape(shape)

    def reserve(self, name: str, size: int, dtype: np.dtype[Any]) -> None:
        """Grow ``name`` up front so the first iteration does not allocate piecemeal."""
        buf = self._bufs.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            self._bufs[name] = np.zeros(size, dtype)


class Layer:
    """Base class: shapes, parameter binding and the forward/backward contract."""

    kind: ClassVar[str] = "layer"

    def __init__(self, index: int, in_shape: Shape3, dtype: np.dtype[Any]) -> None:
        self.index = index
        self.in_shape = in_shape
        self.out_shape: Shape3 = in_shape
        self.dtype = np.dtype(dtype)
        self.params: dict[str, np.ndarray] = {}
        self.updates: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.batch = 0
        self.workspace = Workspace()  # replaced by the network's shared one

    # -- parameters -------------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        """Parameter buffers in ``.weights`` file order (empty for parameter-free layers)."""
        return []

    def bind(self, params: dict[str, np.ndarray], updates: dict[str, np.ndarray]) -> None:
        """Attach arena views; called once, the arrays are never replaced afterwards."""
        self.params = params
        self.updates = updates
        self.grads = {
            s.name: np.zeros(s.shape, self.dtype) for s in self.param_specs() if s.trainable
        }

    def init_params(self, rng: np.random.Generator) -> None:
        """Darknet's initialisation, drawn from ``rng`` in a fixed order."""

    # -- buffers and passes -----------------------------------------------------------------
    def allocate(self, batch: int) -> None:
        """(Re)size the output and workspace buffers for ``batch`` images."""
        self.batch = batch

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        """Store parameter gradients (of the summed loss) in ``grads``; return ``dL/dx``."""
        raise NotImplementedError

    # -- description ------------------------------------------------------------------------
    def arch(self) -> dict[str, Any]:
        """Everything that fixes what the parameters mean (hashed into the fingerprint)."""
        return {"type": self.kind, "in": list(self.in_shape), "out": list(self.out_shape)}

    def n_params(self) -> int:
        return sum(s.size for s in self.param_specs())

    def describe(self) -> str:
        return self.kind


def out_buffer(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A zeroed work buffer (zeroed so stale NaN bit patterns can never leak into sums)."""
    return np.zeros(shape, dtype)
