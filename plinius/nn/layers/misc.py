"""Darknet's ``[dropout]``, ``[softmax]`` and ``[cost]`` layers.

Dropout draws its mask from the network's ``numpy.random.Generator`` (so a saved generator state
resumes the exact same masks) and scales kept units by ``1/(1-p)`` as Darknet does; at inference
it passes its input through untouched. The loss layers take the truth as a ``(classes, B)`` matrix
and return the gradient of the *summed* loss, Darknet's convention (its ``delta`` with the sign
flipped), so parameter gradients are sums over the batch and the optimiser divides by ``batch``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from plinius.nn.layers.base import Layer, Shape3, out_buffer


class DropoutLayer(Layer):
    kind = "dropout"

    def __init__(
        self, index: int, in_shape: Shape3, dtype: np.dtype[Any], *, probability: float
    ) -> None:
        super().__init__(index, in_shape, dtype)
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), found {probability}")
        self.probability = probability
        self.scale = 1.0 / (1.0 - probability)
        self.rng: np.random.Generator | None = None

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        c, h, w = self.in_shape
        self.out = out_buffer((c, h, w, batch), self.dtype)
        self.mask = out_buffer((c, h, w, batch), self.dtype)
        self.dx = out_buffer((c, h, w, batch), self.dtype)
        self.train_mode = False

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self.train_mode = train
        if not train or self.probability == 0.0:
            return x
        if self.rng is None:
            raise RuntimeError("dropout layer has no random generator (not part of a network?)")
        self.rng.random(out=self.mask, dtype=self.mask.dtype)
        # mask = (u >= p) * scale, computed in place: Darknet drops where rand < probability.
        np.greater_equal(self.mask, self.dtype.type(self.probability), out=self.mask)
        self.mask *= self.dtype.type(self.scale)
        np.multiply(x, self.mask, out=self.out)
        return self.out

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        if not self.train_mode or self.probability == 0.0:
            return dy
        np.multiply(dy, self.mask, out=self.dx)
        return self.dx

    def arch(self) -> dict[str, Any]:
        # The probability is a training setting: it does not change what the parameters mean.
        return super().arch()

    def describe(self) -> str:
        return f"dropout p={self.probability:g}"


class _LossLayer(Layer):
    """Common part of the layers that can end a network and compute a loss."""

    has_loss = True

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        c, h, w = self.in_shape
        self.n = c * h * w
        self.out = out_buffer((c, h, w, batch), self.dtype)
        self.dx = out_buffer((c, h, w, batch), self.dtype)
        self.loss_value = 0.0

    def _rows(self, a: np.ndarray) -> np.ndarray:
        """``(C, H, W, B)`` as ``(C*H*W, B)``, Darknet's c, h, w order (a view)."""
        return a.reshape(self.n, self.batch)

    def _store_rows(self, dst: np.ndarray, rows: np.ndarray) -> None:
        dst.reshape(self.n, self.batch)[...] = rows

    def set_truth(self, truth: np.ndarray) -> None:
        """``truth`` is ``(C*H*W, B)``; used by the next ``forward`` in training."""
        self.truth = truth

    def loss_and_grad(self) -> tuple[float, np.ndarray]:
        raise NotImplementedError


class SoftmaxLayer(_LossLayer):
    kind = "softmax"

    def __init__(
        self,
        index: int,
        in_shape: Shape3,
        dtype: np.dtype[Any],
        *,
        groups: int = 1,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(index, in_shape, dtype)
        n = math.prod(in_shape)
        if groups <= 0 or n % groups:
            raise ValueError(f"groups={groups} does not divide the {n} inputs")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, found {temperature}")
        self.groups = groups
        self.temperature = temperature

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        z = self._rows(x).reshape(self.groups, -1, self.batch).astype(self.dtype, copy=True)
        if self.temperature != 1.0:
            z /= self.dtype.type(self.temperature)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        self._store_rows(self.out, z.reshape(self.n, self.batch))
        return self.out

    def loss_and_grad(self) -> tuple[float, np.ndarray]:
        """Cross-entropy ``-sum(t * log p)`` over the batch, and its gradient wrt the input."""
        p = self._rows(self.out)
        t = self.truth
        tiny = np.finfo(self.dtype).tiny
        loss = -float(np.sum(t * np.log(np.maximum(p, tiny)), dtype=np.float64))
        g = (p - t) / self.dtype.type(self.temperature)
        self._store_rows(self.dx, g)
        return loss, self.dx

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        """Chain an upstream gradient (softmax followed by [cost]) through the softmax Jacobian."""
        if not need_dx:
            return None
        p = self._rows(self.out).reshape(self.groups, -1, self.batch)
        g = self._rows(dy).reshape(self.groups, -1, self.batch)
        dot = np.sum(g * p, axis=1, keepdims=True)
        dx = p * (g - dot) / self.dtype.type(self.temperature)
        self._store_rows(self.dx, dx.reshape(self.n, self.batch))
        return self.dx

    def arch(self) -> dict[str, Any]:
        d = super().arch()
        d.update(groups=self.groups, temperature=self.temperature)
        return d

    def describe(self) -> str:
        return "softmax"


class CostLayer(_LossLayer):
    """Sum of squared errors, ``scale * 0.5 * sum((x - t)^2)``.

    Darknet reports ``sum((x - t)^2)`` but descends along ``scale * (t - x)``; we keep Darknet's
    step and report the loss that step is the gradient of, so gradient checks hold.
    """

    kind = "cost"

    def __init__(
        self, index: int, in_shape: Shape3, dtype: np.dtype[Any], *, scale: float = 1.0
    ) -> None:
        super().__init__(index, in_shape, dtype)
        self.scale = scale

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        np.copyto(self.out, x)
        return self.out

    def loss_and_grad(self) -> tuple[float, np.ndarray]:
        diff = self._rows(self.out) - self.truth
        loss = 0.5 * self.scale * float(np.sum(diff.astype(np.float64) ** 2))
        self._store_rows(self.dx, diff * self.dtype.type(self.scale))
        return loss, self.dx

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        return dy if need_dx else None

    def arch(self) -> dict[str, Any]:
        d = super().arch()
        d.update(cost="sse", scale=self.scale)
        return d

    def describe(self) -> str:
        return "cost sse"
