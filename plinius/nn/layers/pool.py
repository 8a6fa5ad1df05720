"""Darknet's ``[maxpool]`` and (global) ``[avgpool]`` layers.

Max pooling follows Darknet's geometry: ``padding`` defaults to ``size - 1``, the window of output
``(i, j)`` starts at ``i*stride - padding//2`` and positions outside the input never win. The
gradient goes to the first maximum in scan order, as Darknet's strict ``>`` comparison picks it.
The common 2x2/2 case on even inputs is done with four strided views instead of a window copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from plinius.nn import parallel
from plinius.nn.layers.base import Layer, Shape3, out_buffer


class MaxPoolLayer(Layer):
    kind = "maxpool"

    def __init__(
        self,
        index: int,
        in_shape: Shape3,
        dtype: np.dtype[Any],
        *,
        size: int,
        stride: int,
        padding: int,
    ) -> None:
        super().__init__(index, in_shape, dtype)
        c, h, w = in_shape
        self.size, self.stride, self.padding = size, stride, padding
        oh = (h + padding - size) // stride + 1
        ow = (w + padding - size) // stride + 1
        if oh <= 0 or ow <= 0:
            raise ValueError(f"a {size}x{size} window does not fit a {h}x{w} input")
        self.out_shape = (c, oh, ow)
        self.offset = padding // 2
        self.fast = size == 2 and stride == 2 and self.offset == 0 and (2 * oh, 2 * ow) == (h, w)

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        c, h, w = self.in_shape
        _, oh, ow = self.out_shape
        dt = self.dtype
        self.out = out_buffer((c, oh, ow, batch), dt)
        self.dx = out_buffer((c, h, w, batch), dt)
        if self.fast:
            self.sel_row = np.zeros((c, oh, ow, batch), bool)  # bottom pair won
            self.sel_top = np.zeros((c, oh, ow, batch), bool)  # right of the top pair won
            self.sel_bot = np.zeros((c, oh, ow, batch), bool)  # right of the bottom pair won
            self.tmp = out_buffer((c, oh, ow, batch), dt)
        else:
            k = self.size
            # Padded input (with -inf margins) and the winning window index per output.
            ph = max(h + self.offset, (oh - 1) * self.stride + k)
            pw = max(w + self.offset, (ow - 1) * self.stride + k)
            self.xpad = np.full((c, ph, pw, batch), -np.inf, dt)
            self.arg = np.zeros((c, oh, ow, batch), np.intp)
            self.stack = out_buffer((c, oh, ow, batch, k * k), dt)
            self.gpad = out_buffer((c, ph, pw, batch), dt)

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        if self.fast:
            self._forward_fast(x)
        else:
            self._forward_general(x)
        return self.out

    def _forward_fast(self, x: np.ndarray) -> None:
        def work(lo: int, hi: int) -> None:
            xs = x[lo:hi]
            a, b = xs[:, 0::2, 0::2], xs[:, 0::2, 1::2]
            c, d = xs[:, 1::2, 0::2], xs[:, 1::2, 1::2]
            top, best, row = self.tmp[lo:hi], self.out[lo:hi], self.sel_row[lo:hi]
            np.greater(b, a, out=self.sel_top[lo:hi])
            np.maximum(a, b, out=top)
            np.greater(d, c, out=self.sel_bot[lo:hi])
            np.maximum(c, d, out=best)  # the bottom pair's maximum, for now
            np.greater(best, top, out=row)  # ties go to the top pair, first in scan order
            np.maximum(top, best, out=best)

        parallel.split(work, self.in_shape[0])

    def _windows(self, buf: np.ndarray, kh: int, kw: int) -> np.ndarray:
        """The input positions that window element ``(kh, kw)`` of every output reads."""
        _, oh, ow = self.out_shape
        s = self.stride
        return buf[:, kh : kh + s * (oh - 1) + 1 : s, kw : kw + s * (ow - 1) + 1 : s]

    def _forward_general(self, x: np.ndarray) -> None:
        _, h, w = self.in_shape
        k, o = self.size, self.offset
        self.xpad[:, o : o + h, o : o + w] = x
        for kh in range(k):
            for kw in range(k):
                self.stack[..., kh * k + kw] = self._windows(self.xpad, kh, kw)
        np.argmax(self.stack, axis=-1, out=self.arg)  # first maximum, as Darknet's strict '>'
        self.out[...] = np.take_along_axis(self.stack, self.arg[..., None], axis=-1)[..., 0]

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        if self.fast:
            self._backward_fast(dy)
        else:
            self._backward_general(dy)
        return self.dx

    def _backward_fast(self, dy: np.ndarray) -> None:
        def work(lo: int, hi: int) -> None:
            g, dx, g_bot = dy[lo:hi], self.dx[lo:hi], self.tmp[lo:hi]
            a, b = dx[:, 0::2, 0::2], dx[:, 0::2, 1::2]
            c, d = dx[:, 1::2, 0::2], dx[:, 1::2, 1::2]
            # Exactly one of each pair gets g: multiply by the 0/1 winner masks, subtract the rest.
            np.multiply(g, self.sel_row[lo:hi], out=g_bot)
            np.subtract(g, g_bot, out=a)  # the top pair's share, parked in a
            np.multiply(a, self.sel_top[lo:hi], out=b)
            np.subtract(a, b, out=a)
            np.multiply(g_bot, self.sel_bot[lo:hi], out=d)
            np.subtract(g_bot, d, out=c)

        parallel.split(work, self.in_shape[0])

    def _backward_general(self, dy: np.ndarray) -> None:
        _, h, w = self.in_shape
        k, o = self.size, self.offset
        self.gpad.fill(0)
        for kh in range(k):
            for kw in range(k):
                view = self._windows(self.gpad, kh, kw)
                view += np.where(self.arg == kh * k + kw, dy, 0)
        self.dx[...] = self.gpad[:, o : o + h, o : o + w]

    def arch(self) -> dict[str, Any]:
        d = super().arch()
        d.update(size=self.size, stride=self.stride, padding=self.padding)
        return d

    def describe(self) -> str:
        return f"maxpool {self.size}x{self.size}/{self.stride}"


class AvgPoolLayer(Layer):
    """Global average pooling: ``(C, H, W, B) -> (C, 1, 1, B)``."""

    kind = "avgpool"

    def __init__(self, index: int, in_shape: Shape3, dtype: np.dtype[Any]) -> None:
        super().__init__(index, in_shape, dtype)
        self.out_shape = (in_shape[0], 1, 1)

    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        c, h, w = self.in_shape
        self.out = out_buffer((c, 1, 1, batch), self.dtype)
        self.dx = out_buffer((c, h, w, batch), self.dtype)

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        c, h, w = self.in_shape
        out = self.out.reshape(c, self.batch)
        np.sum(x.reshape(c, h * w, self.batch), axis=1, out=out)
        out /= h * w
        return self.out

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        c, h, w = self.in_shape
        np.divide(dy.reshape(c, 1, 1, self.batch), h * w, out=self.dx)
        return self.dx

    def describe(self) -> str:
        return "avgpool"
