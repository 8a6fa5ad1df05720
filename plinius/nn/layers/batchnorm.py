"""Batch normalisation over ``(F, N)`` rows, as Darknet's convolutional and connected layers do it.

Forward follows Darknet: the batch variance is the unbiased one (``/(N-1)``), the normalisation
is ``(x - mean) / (sqrt(var) + 1e-6)``, then ``* scales + biases``, and the rolling statistics move
by ``0.99 * old + 0.01 * batch``. The backward pass is the exact derivative of that forward (Darknet
mixes in a different epsilon there), so finite-difference checks hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from plinius.nn import activations, parallel

EPS = 1e-6
ROLLING = 0.01


class BatchNormState:
    """Per-batch statistics kept from forward for backward, plus the normalised input."""

    def __init__(self, channels: int, n: int, dtype: np.dtype[Any]) -> None:
        self.n = n
        self.xhat = np.zeros((channels, n), dtype)
        self.mean = np.zeros(channels, dtype)
        self.var = np.zeros(channels, dtype)
        self.sqrt_var = np.zeros(channels, dtype)
        self.inv_std = np.zeros(channels, dtype)


def forward_train(
    st: BatchNormState,
    out: np.ndarray,
    tmp: np.ndarray,
    params: dict[str, np.ndarray],
    activation: str,
) -> None:
    """``st.xhat`` holds the raw pre-activations; leaves ``xhat`` normalised, ``out`` activated."""
    y = st.xhat
    n = st.n
    scales, biases = params["scales"], params["biases"]

    def work(lo: int, hi: int) -> None:
        rows = y[lo:hi]
        np.sum(rows, axis=1, out=st.mean[lo:hi])
        st.mean[lo:hi] /= n
        rows -= st.mean[lo:hi, None]
        np.einsum("ij,ij->i", rows, rows, out=st.var[lo:hi])
        st.var[lo:hi] /= max(n - 1, 1)
        np.sqrt(st.var[lo:hi], out=st.sqrt_var[lo:hi])
        np.add(st.sqrt_var[lo:hi], EPS, out=st.inv_std[lo:hi])
        np.reciprocal(st.inv_std[lo:hi], out=st.inv_std[lo:hi])
        rows *= st.inv_std[lo:hi, None]
        o = out[lo:hi]
        np.multiply(rows, scales[lo:hi, None], out=o)
        o += biases[lo:hi, None]
        activations.forward(activation, o, tmp[lo:hi])

    parallel.split(work, y.shape[0])
    rm, rv = params["rolling_mean"], params["rolling_variance"]
    rm *= 1 - ROLLING
    rm += ROLLING * st.mean
    rv *= 1 - ROLLING
    rv += ROLLING * st.var


def forward_infer(
    y: np.ndarray, params: dict[str, np.ndarray], activation: str, tmp: np.ndarray
) -> None:
    """Normalise ``y`` in place with the rolling statistics, scale, shift and activate it."""
    scale = params["scales"] / (np.sqrt(params["rolling_variance"]) + EPS)
    shift = params["biases"] - params["rolling_mean"] * scale

    def work(lo: int, hi: int) -> None:
        rows = y[lo:hi]
        rows *= scale[lo:hi, None]
        rows += shift[lo:hi, None]
        activations.forward(activation, rows, tmp[lo:hi])

    parallel.split(work, y.shape[0])


def backward(
    st: BatchNormState,
    g: np.ndarray,
    out: np.ndarray,
    tmp: np.ndarray,
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    activation: str,
) -> None:
    """``g`` (dL/d output) becomes dL/d(pre-normalisation input), in place; fills grads."""
    n = st.n
    scales = params["scales"]
    dbias, dscale = grads["biases"], grads["scales"]
    xhat = st.xhat
    dt = g.dtype.type
    # sqrt(var) is 0 only for a constant channel, where xhat is 0 too; any finite value works.
    safe_sqrt = np.where(st.sqrt_var > 0, st.sqrt_var, 1).astype(g.dtype)

    def work(lo: int, hi: int) -> None:
        rows = g[lo:hi]
        activations.backward(activation, out[lo:hi], rows, tmp[lo:hi])
        np.sum(rows, axis=1, out=dbias[lo:hi])
        np.einsum("ij,ij->i", rows, xhat[lo:hi], out=dscale[lo:hi])
        sc = scales[lo:hi]
        inv = st.inv_std[lo:hi]
        a = sc * inv
        b = -(sc * dscale[lo:hi]) / (safe_sqrt[lo:hi] * dt(max(n - 1, 1)))
        c = -(sc * dbias[lo:hi]) * inv / dt(n)
        t = tmp[lo:hi]
        np.multiply(xhat[lo:hi], b[:, None], out=t)
        t += c[:, None]
        rows *= a[:, None]
        rows += t

    parallel.split(work, g.shape[0])
