"""Darknet's ``[convolutional]`` layer: im2col + BLAS products, optional batch norm, activation.

With activations stored ``(C, H, W, B)``, the column matrix is ``(C*k*k, Ho*Wo*B)`` and the
product ``W @ col`` is already the ``(F, Ho, Wo, B)`` output. For stride-1 layers (all of the
paper's) the product runs block by block (:func:`conv_blocked`): each ~512-column block is
gathered and multiplied while it is still in cache, so the big matrix is only written once (it is
kept for the weight gradient ``dY @ col.T``, within the network's memory budget, else rebuilt)
and never read back cold. Their input gradient is itself a blocked convolution of the padded
``dY`` with the flipped, transposed kernel. Other strides use a full im2col and ``W.T @ dY``
scattered back by col2im (strided adds). Copies and products are split over the cores
(:mod:`plinius.nn.parallel`). Weights are ``(filters, channels, size, size)``, Darknet's layout,
so ``.weights`` files load as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from plinius.nn import activations, parallel
from plinius.nn.layers import batchnorm
from plinius.nn.layers.base import Layer, ParamSpec, Shape3, out_buffer

Block = tuple[int, int, int, int]  # output rows r0:r1, columns w0:w1


def im2col(
    x: np.ndarray,
    xpad: np.ndarray,
    pad: int,
    k: int,
    stride: int,
    out_h: int,
    out_w: int,
    col: np.ndarray,
) -> None:
    """Copy ``x`` (C, H, W, B) into the zero-bordered ``xpad``, then its k*k windows into ``col``.

    ``col`` is (C*k*k, out_h*out_w*B) with rows in Darknet's (c, kh, kw) weight order. With the
    batch innermost, every copied run is a whole ``out_w * B`` row segment, not ``out_w`` values.
    """
    c, h, w, b = x.shape
    st = xpad.strides
    windows = as_strided(
        xpad,
        shape=(c, k, k, out_h, out_w, b),
        strides=(st[0], st[1], st[2], st[1] * stride, st[2] * stride, st[3]),
        writeable=False,
    )
    col6 = col.reshape(c, k, k, out_h, out_w, b)

    def work(lo: int, hi: int) -> None:
        xpad[lo:hi, pad : pad + h, pad : pad + w] = x[lo:hi]
        np.copyto(col6[lo:hi], windows[lo:hi])

    parallel.split(work, c, 1)


BLOCK_COLUMNS = 512  # columns per block: a (C*k*k x 512) float32 block stays in L2


def col_blocks(out_h: int, out_w: int, b: int, target: int = BLOCK_COLUMNS) -> list[Block]:
    """Contiguous column ranges of the (out_h, out_w, B) output, each about ``target`` wide."""
    if out_w * b >= target:
        step = max(1, target // b)
        return [
            (r, r + 1, w0, min(out_w, w0 + step))
            for r in range(out_h)
            for w0 in range(0, out_w, step)
        ]
    rows = max(1, target // (out_w * b))
    return [(r0, min(out_h, r0 + rows), 0, out_w) for r0 in range(0, out_h, rows)]


def pad_into(x: np.ndarray, xpad: np.ndarray, pad: int) -> None:
    """Copy ``x`` (C, H, W, B) into the interior of the zero-bordered ``xpad``."""
    _, h, w, _ = x.shape

    def work(lo: int, hi: int) -> None:
        xpad[lo:hi, pad : pad + h, pad : pad + w] = x[lo:hi]

    parallel.split(work, x.shape[0], 1)


def conv_blocked(
    wmat: np.ndarray,
    xpad: np.ndarray,
    k: int,
    stride: int,
    out_h: int,
    out_w: int,
    out: np.ndarray,
    col: np.ndarray | None = None,
    target: int = BLOCK_COLUMNS,
) -> None:
    """``out = wmat @ im2col(xpad)``, one cache-sized block of columns at a time.

    Each block is gathered and multiplied while it is still in cache, instead of writing the
    whole column matrix to memory and reading it back. With ``col`` given, the blocks are also
    left there (the weight gradient needs them); otherwise they go to per-thread scratch.
    """
    c, _, _, b = xpad.shape
    st = xpad.strides
    windows = as_strided(
        xpad,
        shape=(c, k, k, out_h, out_w, b),
        strides=(st[0], st[1], st[2], st[1] * stride, st[2] * stride, st[3]),
        writeable=False,
    )
    col6 = None if col is None else col.reshape(c, k, k, out_h, out_w, b)
    blocks = col_blocks(out_h, out_w, b, target)
    rows = c * k * k

    def work(lo: int, hi: int) -> None:
        for r0, r1, w0, w1 in blocks[lo:hi]:
            ncol = (r1 - r0) * (w1 - w0) * b
            c0 = (r0 * out_w + w0) * b
            src = windows[:, :, :, r0:r1, w0:w1]
            if col6 is None:
                blk = parallel.scratch("colblock", (rows, ncol), xpad.dtype)
                np.copyto(blk.reshape(src.shape), src)
            else:
                np.copyto(col6[:, :, :, r0:r1, w0:w1], src)
                blk = col[:, c0 : c0 + ncol]  # type: ignore[index]
            np.matmul(wmat, blk, out=out[:, c0 : c0 + ncol])

    parallel.split(work, len(blocks), 1)


class ConvLayer(Layer):
    kind = "convolutional"

    def __init__(
        self,
        index: int,
        in_shape: Shape3,
        dtype: np.dtype[Any],
        *,
        filters: int,
        size: int,
        stride: int,
        padding: int,
        activation: str,
        batch_normalize: bool,
    ) -> None:
        super().__init__(index, in_shape, dtype)
        c, h, w = in_shape
        self.filters = filters
        self.size = size
        self.stride = stride
        self.padding = padding
        self.activation = activation
        self.batch_normalize = batch_normalize
        out_h = (h + 2 * padding - size) // stride + 1
        out_w = (w + 2 * padding - size) // stride + 1
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"a {size}x{size} kernel does not fit a {h}x{w} input")
        self.out_shape = (filters, out_h, out_w)
        self.ksize = c * size * size
        self.keep_col = True

    def param_specs(self) -> list[ParamSpec]:
        f = self.filters
        specs = [ParamSpec("biases", (f,))]
        if self.batch_normalize:
            specs += [
                ParamSpec("scales", (f,)),
                ParamSpec("rolling_mean", (f,), trainable=False),
                ParamSpec("rolling_variance", (f,), trainable=False),
            ]
        c = self.in_shape[0]
        specs.append(ParamSpec("weights", (f, c, self.size, self.size), decay=True))
        return specs

    def init_params(self, rng: np.random.Generator) -> None:
        # Darknet: weights ~ sqrt(2 / (size*size*c)) * N(0, 1); biases 0; scales 1.
        w = self.params["weights"]
        rng.standard_normal(out=w.reshape(-1), dtype=w.dtype)
        w *= w.dtype.type(math.sqrt(2.0 / self.ksize))
        self.params["biases"][:] = 0
        if self.batch_normalize:
            self.params["scales"][:] = 1
            self.params["rolling_mean"][:] = 0
            # Darknet starts at 0; 1 keeps an untrained network's inference finite and sane.
            self.params["rolling_variance"][:] = 1

    # -- buffers ----------------------------------------------------------------------------
    def allocate(self, batch: int) -> None:
        super().allocate(batch)
        c, h, w = self.in_shape
        f, oh, ow = self.out_shape
        p = self.padding
        n = batch * oh * ow
        dt = self.dtype
        self.n = n
        self.out = out_buffer((f, oh, ow, batch), dt)
        self.dx = out_buffer((c, h, w, batch), dt)
        self.pointwise = self.size == 1 and self.stride == 1 and p == 0
        self.transposed = False
        if not self.pointwise:
            # Padded copy of the input; its border stays zero (col2im restores it after use).
            self.xpad = out_buffer((c, h + 2 * p, w + 2 * p, batch), dt)
            self.col: np.ndarray | None = out_buffer((self.ksize, n), dt) if self.keep_col else None
            # dL/dx of a stride-1 conv is a conv of dY (padded by k-1-p) with the flipped,
            # transposed kernel: one more im2col + product, cheaper than col2im's strided adds.
            q = self.size - 1 - p
            self.transposed = self.stride == 1 and q >= 0
            if self.transposed:
                self.dypad = out_buffer((f, oh + 2 * q, ow + 2 * q, batch), dt)
                self.wflip = np.zeros((c, f * self.size * self.size), dt)
        self.bn = batchnorm.BatchNormState(f, n, dt) if self.batch_normalize else None
        self.workspace.reserve("tmp", f * n, dt)
        if not self.pointwise:
            if not self.transposed:
                self.workspace.reserve("dcol", self.ksize * n, dt)
            if not self.keep_col:
                self.workspace.reserve("col", self.ksize * n, dt)

    def _col_buffer(self) -> np.ndarray:
        if self.col is not None:
            return self.col
        return self.workspace.get("col", (self.ksize, self.n), self.dtype)

    def _im2col(self, x: np.ndarray) -> np.ndarray:
        """Fill the column matrix from ``x`` (C, H, W, B); returns it as (C*k*k, Ho*Wo*B)."""
        _, oh, ow = self.out_shape
        col = self._col_buffer()
        im2col(x, self.xpad, self.padding, self.size, self.stride, oh, ow, col)
        return col

    # -- passes -----------------------------------------------------------------------------
    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        f = self.filters
        wmat = self.params["weights"].reshape(f, self.ksize)
        c = self.in_shape[0]
        out = self.out.reshape(f, self.n)
        tmp = self.workspace.get("tmp", (f, self.n), self.dtype)
        dest = self.bn.xhat if self.bn is not None and train else out
        if self.pointwise:
            parallel.matmul(wmat, x.reshape(c, self.n), dest)
        elif self.transposed:
            _, oh, ow = self.out_shape
            pad_into(x, self.xpad, self.padding)
            # In training the weight gradient needs the columns: keep them if we may.
            keep = self.col if train else None
            conv_blocked(wmat, self.xpad, self.size, self.stride, oh, ow, dest, keep)
        else:
            parallel.matmul(wmat, self._im2col(x), dest)
        if self.bn is not None and train:
            batchnorm.forward_train(self.bn, out, tmp, self.params, self.activation)
        else:
            if self.bn is not None:
                batchnorm.forward_infer(out, self.params, self.activation, tmp)
            else:
                bias = self.params["biases"]

                def work(lo: int, hi: int) -> None:
                    rows = out[lo:hi]
                    rows += bias[lo:hi, None]
                    activations.forward(self.activation, rows, tmp[lo:hi])

                parallel.split(work, f)
        self._x = x
        return self.out

    def backward(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        f, c = self.filters, self.in_shape[0]
        g = dy.reshape(f, self.n)
        out = self.out.reshape(f, self.n)
        tmp = self.workspace.get("tmp", (f, self.n), self.dtype)
        if self.bn is not None:
            batchnorm.backward(self.bn, g, out, tmp, self.params, self.grads, self.activation)
        else:
            dbias = self.grads["biases"]

            def work(lo: int, hi: int) -> None:
                activations.backward(self.activation, out[lo:hi], g[lo:hi], tmp[lo:hi])
                np.sum(g[lo:hi], axis=1, out=dbias[lo:hi])

            parallel.split(work, f)
        if self.pointwise:
            inp = self._x.reshape(c, self.n)
        elif self.col is not None:
            inp = self.col
        else:
            inp = self._im2col(self._x)
        parallel.matmul(g, inp.T, self.grads["weights"].reshape(f, self.ksize))
        if not need_dx:
            return None
        wmat = self.params["weights"].reshape(f, self.ksize)
        if self.pointwise:
            parallel.matmul(wmat.T, g, self.dx.reshape(c, self.n))
            return self.dx
        if self.transposed:
            self._backward_transposed(dy)
            return self.dx
        dcol = self.workspace.get("dcol", (self.ksize, self.n), self.dtype)
        parallel.matmul(wmat.T, g, dcol)
        self._col2im(dcol)
        return self.dx

    def _backward_transposed(self, dy: np.ndarray) -> None:
        f, k, p = self.filters, self.size, self.padding
        c, h, w = self.in_shape
        q = k - 1 - p
        w4 = self.params["weights"]
        # wflip[c, (f, kh, kw)] = W[f, c, k-1-kh, k-1-kw]
        np.copyto(self.wflip.reshape(c, f, k, k), w4[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        pad_into(dy, self.dypad, q)
        conv_blocked(self.wflip, self.dypad, k, 1, h, w, self.dx.reshape(c, self.batch * h * w))

    def _col2im(self, dcol: np.ndarray) -> None:
        """Sum the column gradients back onto the (padded) input positions, then crop."""
        c, h, w = self.in_shape
        _, oh, ow = self.out_shape
        p, k, s, b = self.padding, self.size, self.stride, self.batch
        xp = self.xpad  # reused as the padded gradient accumulator
        d6 = dcol.reshape(c, k, k, oh, ow, b)
        span_h, span_w = s * (oh - 1) + 1, s * (ow - 1) + 1

        def work(lo: int, hi: int) -> None:
            acc = xp[lo:hi]
            acc.fill(0)
            for kh in range(k):
                for kw in range(k):
                    view = acc[:, kh : kh + span_h : s, kw : kw + span_w : s]
                    if kh == 0 and kw == 0:
                        np.copyto(view, d6[lo:hi, 0, 0])  # onto zeros: a copy is an add
                    else:
                        np.add(view, d6[lo:hi, kh, kw], out=view)
            self.dx[lo:hi] = acc[:, p : p + h, p : p + w]
            if p:
                # Restore the zero border the next forward's im2col relies on.
                acc[:, :p].fill(0)
                acc[:, p + h :].fill(0)
                acc[:, :, :p].fill(0)
                acc[:, :, p + w :].fill(0)

        parallel.split(work, c, 1)

    # -- description ------------------------------------------------------------------------
    def arch(self) -> dict[str, Any]:
        d = super().arch()
        d.update(
            filters=self.filters,
            size=self.size,
            stride=self.stride,
            padding=self.padding,
            activation=self.activation,
            batch_normalize=self.batch_normalize,
        )
        return d

    def describe(self) -> str:
        bn = " bn" if self.batch_normalize else ""
        return (
            f"conv {self.size}x{self.size}/{self.stride} {self.in_shape[0]}->{self.filters}"
            f"{bn} {self.activation}"
        )
