"""Darknet's activations, applied in place, with gradients computed from the *output*.

Working from the output (as Darknet does) means a layer keeps one buffer per activation, not two.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("leaky", "relu", "linear", "logistic")
LEAKY_SLOPE = 0.1


def forward(kind: str, y: np.ndarray, tmp: np.ndarray) -> None:
    """``y = act(y)`` in place; ``tmp`` is scratch of the same shape."""
    if kind == "linear":
        return
    if kind == "leaky":
        np.multiply(y, y.dtype.type(LEAKY_SLOPE), out=tmp)
        np.maximum(y, tmp, out=y)
    elif kind == "relu":
        np.maximum(y, 0, out=y)
    elif kind == "logistic":
        np.negative(y, out=y)
        np.exp(y, out=y)
        y += 1
        np.reciprocal(y, out=y)
    else:  # pragma: no cover - the parser rejects other names
        raise ValueError(kind)


def backward(kind: str, y: np.ndarray, g: np.ndarray, tmp: np.ndarray) -> None:
    """``g *= act'(x)`` in place, where ``y = act(x)`` is the stored output."""
    if kind == "linear":
        return
    if kind == "leaky":
        # g * (y > 0 ? 1 : 0.1) as two dense passes (masked ufuncs are slower than this).
        np.greater(y, 0, out=tmp)  # 1.0 / 0.0
        tmp *= y.dtype.type(1 - LEAKY_SLOPE)
        tmp += y.dtype.type(LEAKY_SLOPE)
        g *= tmp
    elif kind == "relu":
        np.greater(y, 0, out=tmp)
        g *= tmp
    elif kind == "logistic":
        np.subtract(1, y, out=tmp)
        tmp *= y
        g *= tmp
    else:  # pragma: no cover
        raise ValueError(kind)
