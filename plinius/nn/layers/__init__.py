"""Layer types of the Darknet-style engine, and how ``.cfg`` sections become layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from plinius.nn import activations
from plinius.nn.cfg import Section
from plinius.nn.layers.base import Layer, ParamSpec, Shape3
from plinius.nn.layers.connected import ConnectedLayer
from plinius.nn.layers.conv import ConvLayer
from plinius.nn.layers.misc import CostLayer, DropoutLayer, SoftmaxLayer
from plinius.nn.layers.pool import AvgPoolLayer, MaxPoolLayer

__all__ = [
    "AvgPoolLayer",
    "ConnectedLayer",
    "ConvLayer",
    "CostLayer",
    "DropoutLayer",
    "Layer",
    "MaxPoolLayer",
    "ParamSpec",
    "SoftmaxLayer",
    "build_layer",
]

# Section names Darknet accepts for each layer type.
ALIASES = {
    "convolutional": "convolutional",
    "conv": "convolutional",
    "maxpool": "maxpool",
    "max": "maxpool",
    "avgpool": "avgpool",
    "avg": "avgpool",
    "connected": "connected",
    "conn": "connected",
    "dropout": "dropout",
    "softmax": "softmax",
    "soft": "softmax",
    "cost": "cost",
}


def _activation(sec: Section, default: str) -> str:
    return sec.get_choice("activation", activations.ACTIVATIONS, default)


def _flag(sec: Section, key: str) -> bool:
    v = sec.get_int(key, 0)
    if v not in (0, 1):
        raise sec.error(f"expected 0 or 1, found {v}", key)
    return bool(v)


def _unsupported(sec: Section, keys: tuple[str, ...]) -> None:
    for key in keys:
        if sec.has(key) and sec.get_str(key) not in ("0",):
            raise sec.error("is not supported by plinius", key)


def build_layer(index: int, sec: Section, in_shape: Shape3, dtype: np.dtype[Any]) -> Layer:
    """Make layer ``index`` from its section, given its input shape; errors name file:line."""
    kind = ALIASES.get(sec.name)
    if kind is None:
        supported = ", ".join(sorted(set(ALIASES.values())))
        raise sec.error(f"layer type not supported (supported: {supported})")
    try:
        layer = _make(kind, index, sec, in_shape, dtype)
    except ValueError as exc:
        raise sec.error(str(exc)) from None
    sec.check_all_used()
    return layer


def _make(kind: str, index: int, sec: Section, in_shape: Shape3, dtype: np.dtype[Any]) -> Layer:
    if kind == "convolutional":
        filters = sec.get_int("filters", 1)
        sec.positive("filters", filters)
        size = sec.get_int("size", 1)
        sec.positive("size", size)
        stride = sec.get_int("stride", 1)
        sec.positive("stride", stride)
        pad = _flag(sec, "pad")
        padding = sec.get_int("padding", 0)
        if pad:
            padding = size // 2
        if padding < 0:
            raise sec.error(f"must be >= 0, found {padding}", "padding")
        groups = sec.get_int("groups", 1)
        if groups != 1:
            raise sec.error("grouped convolutions are not supported", "groups")
        _unsupported(sec, ("binary", "xnor", "dilation", "flipped", "dot", "share_index"))
        return ConvLayer(
            index,
            in_shape,
            dtype,
            filters=filters,
            size=size,
            stride=stride,
            padding=padding,
            activation=_activation(sec, "logistic"),
            batch_normalize=_flag(sec, "batch_normalize"),
        )
    if kind == "maxpool":
        stride = sec.get_int("stride", 1)
        sec.positive("stride", stride)
        size = sec.get_int("size", stride)
        sec.positive("size", size)
        padding = sec.get_int("padding", size - 1)
        if padding < 0:
            raise sec.error(f"must be >= 0, found {padding}", "padding")
        return MaxPoolLayer(index, in_shape, dtype, size=size, stride=stride, padding=padding)
    if kind == "avgpool":
        return AvgPoolLayer(index, in_shape, dtype)
    if kind == "connected":
        outputs = sec.get_int("output", 1)
        sec.positive("output", outputs)
        return ConnectedLayer(
            index,
            in_shape,
            dtype,
            outputs=outputs,
            activation=_activation(sec, "logistic"),
            batch_normalize=_flag(sec, "batch_normalize"),
        )
    if kind == "dropout":
        return DropoutLayer(index, in_shape, dtype, probability=sec.get_float("probability", 0.5))
    if kind == "softmax":
        _unsupported(sec, ("tree", "spatial"))
        sec.get_int("noloss", 0)  # accepted: our softmax only computes a loss when it is last
        return SoftmaxLayer(
            index,
            in_shape,
            dtype,
            groups=sec.get_int("groups", 1),
            temperature=sec.get_float("temperature", 1.0),
        )
    # cost
    cost_type = sec.get_str("type", "sse")
    if cost_type != "sse":
        raise sec.error(f"cost type '{cost_type}' is not supported (only sse)", "type")
    return CostLayer(index, in_shape, dtype, scale=sec.get_float("scale", 1.0))
