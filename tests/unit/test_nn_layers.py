"""Finite-difference gradient checks of every layer type, in float64 so the checks are tight.

Each layer computes ``f = sum(out * R)`` for a fixed random ``R``; its backward pass given ``R``
must match central differences of ``f`` for the input and for every trainable parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from plinius.nn.layers import (
    AvgPoolLayer,
    ConnectedLayer,
    ConvLayer,
    CostLayer,
    DropoutLayer,
    Layer,
    MaxPoolLayer,
    SoftmaxLayer,
)
from plinius.nn.layers.conv import col_blocks, conv_blocked, im2col, pad_into

F64 = np.dtype(np.float64)
H = 1e-6


def prepare(layer: Layer, batch: int, seed: int = 0) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    specs = layer.param_specs()
    params = {s.name: np.zeros(s.shape, F64) for s in specs}
    updates = {s.name: np.zeros(s.shape, F64) for s in specs if s.trainable}
    layer.bind(params, updates)
    layer.init_params(rng)
    for name in ("biases", "scales"):
        if name in params:  # make them non-trivial so their gradients are really exercised
            params[name][:] = rng.normal(size=params[name].shape) * 0.5 + (name == "scales")
    if "rolling_variance" in params:
        params["rolling_variance"][:] = rng.uniform(0.5, 2.0, size=params["rolling_variance"].shape)
        params["rolling_mean"][:] = rng.normal(size=params["rolling_mean"].shape) * 0.1
    layer.allocate(batch)
    return rng


def input_for(layer: Layer, batch: int, rng: np.random.Generator) -> np.ndarray:
    c, h, w = layer.in_shape
    return rng.normal(size=(c, h, w, batch))


def check_layer(
    layer: Layer,
    batch: int = 3,
    train: bool = True,
    seed: int = 0,
    before_forward: Callable[[], None] | None = None,
    samples: int = 25,
    tol: float = 1e-5,
) -> None:
    rng = prepare(layer, batch, seed)
    x = input_for(layer, batch, rng)
    c, h, w = layer.out_shape
    r = rng.normal(size=(c, h, w, batch))

    def f() -> float:
        if before_forward:
            before_forward()
        return float(np.sum(layer.forward(x, train) * r))

    f()
    dx = layer.backward(r.copy(), need_dx=True)
    assert dx is not None
    dx = dx.copy()
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def numeric(arr: np.ndarray, idx: tuple[int, ...]) -> float:
        old = arr[idx]
        arr[idx] = old + H
        fp = f()
        arr[idx] = old - H
        fm = f()
        arr[idx] = old
        return (fp - fm) / (2 * H)

    def compare(arr: np.ndarray, analytic: np.ndarray, what: str) -> None:
        flat = rng.choice(arr.size, size=min(samples, arr.size), replace=False)
        for i in flat:
            idx = np.unravel_index(i, arr.shape)
            num = numeric(arr, idx)
            ana = float(analytic[idx])
            scale = max(1.0, abs(num), abs(ana))
            assert abs(num - ana) <= tol * scale, f"{what}{idx}: numeric {num} vs analytic {ana}"

    compare(x, dx, "dx")
    for name, g in grads.items():
        compare(layer.params[name], g, name)
    assert grads or not layer.param_specs()


def conv(in_shape: tuple[int, int, int], **kw: Any) -> ConvLayer:
    opts: dict[str, Any] = dict(
        filters=4, size=3, stride=1, padding=1, activation="leaky", batch_normalize=True
    )
    opts.update(kw)
    return ConvLayer(1, in_shape, F64, **opts)


@pytest.mark.parametrize(
    "in_shape,opts",
    [
        ((3, 6, 5), {}),  # the paper's layer: 3x3/1 pad 1, batch norm, leaky (transposed dx)
        ((2, 7, 7), {"stride": 2, "batch_normalize": False, "activation": "relu"}),  # col2im dx
        ((3, 5, 5), {"size": 1, "padding": 0, "batch_normalize": False, "activation": "linear"}),
        ((2, 6, 6), {"padding": 0, "activation": "logistic"}),  # valid 3x3, no padding
        ((2, 5, 6), {"size": 2, "padding": 0, "stride": 1, "activation": "leaky"}),  # even kernel
        ((2, 5, 5), {"size": 1, "padding": 1, "batch_normalize": False}),  # 1x1 with padding
    ],
)
def test_conv_gradients(in_shape: tuple[int, int, int], opts: dict[str, Any]) -> None:
    check_layer(conv(in_shape, **opts))


def test_conv_gradients_without_kept_columns() -> None:
    layer = conv((3, 5, 5))
    layer.keep_col = False  # the columns are rebuilt in backward
    check_layer(layer)


def test_conv_inference_uses_rolling_statistics() -> None:
    layer = conv((2, 4, 4), activation="linear")
    rng = prepare(layer, 2)
    x = input_for(layer, 2, rng)
    y = layer.forward(x, train=False).copy()
    p = layer.params
    layer_plain = conv((2, 4, 4), activation="linear", batch_normalize=False)
    prepare(layer_plain, 2)
    layer_plain.params["weights"][:] = p["weights"]
    layer_plain.params["biases"][:] = 0
    z = layer_plain.forward(x, train=False)
    std = np.sqrt(p["rolling_variance"]) + 1e-6
    want = (z - p["rolling_mean"][:, None, None, None]) / std[:, None, None, None]
    want = want * p["scales"][:, None, None, None] + p["biases"][:, None, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("in_shape", [(6, 1, 1), (2, 3, 2)])
def test_connected_gradients(bn: bool, in_shape: tuple[int, int, int]) -> None:
    layer = ConnectedLayer(2, in_shape, F64, outputs=4, activation="leaky", batch_normalize=bn)
    check_layer(layer, batch=4)


def test_connected_flattens_in_darknet_order() -> None:
    layer = ConnectedLayer(0, (2, 2, 3), F64, outputs=3, activation="linear", batch_normalize=False)
    rng = prepare(layer, 2)
    x = input_for(layer, 2, rng)
    y = layer.forward(x, train=False).reshape(3, 2)
    flat = x.transpose(3, 0, 1, 2).reshape(2, -1)  # per image c, h, w: Darknet's order
    want = flat @ layer.params["weights"].T + layer.params["biases"]
    np.testing.assert_allclose(y.T, want, rtol=1e-12)


@pytest.mark.parametrize(
    "in_shape,size,stride,padding",
    [
        ((3, 6, 4), 2, 2, 1),  # the fast 2x2/2 path
        ((2, 7, 7), 2, 2, 1),  # odd input: general path, last window half outside
        ((2, 7, 6), 3, 2, 2),  # 3x3/2 with Darknet's default padding
        ((2, 5, 5), 3, 1, 2),  # overlapping windows
        ((2, 4, 4), 2, 2, 2),  # explicit padding shifts the windows: not the fast path
    ],
)
def test_maxpool_gradients(
    in_shape: tuple[int, int, int], size: int, stride: int, padding: int
) -> None:
    layer = MaxPoolLayer(0, in_shape, F64, size=size, stride=stride, padding=padding)
    check_layer(layer)


def test_maxpool_geometry_and_ties_follow_darknet() -> None:
    layer = MaxPoolLayer(0, (1, 4, 4), F64, size=2, stride=2, padding=1)
    assert layer.out_shape == (1, 2, 2)
    prepare(layer, 1)
    x = np.zeros((1, 4, 4, 1))
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = 5.0  # tie in the first window: the first one wins
    x[0, 3, 3, 0] = 7.0
    x[0, 0, 3, 0] = x[0, 1, 3, 0] = 2.0  # tie between rows of a window: the top one wins
    out = layer.forward(x, train=True)
    assert out[0, 0, 0, 0] == 5.0 and out[0, 1, 1, 0] == 7.0
    dx = layer.backward(np.ones((1, 2, 2, 1)), need_dx=True)
    assert dx is not None
    assert dx[0, 0, 0, 0] == 1.0 and dx[0, 0, 1, 0] == 0.0 and dx[0, 3, 3, 0] == 1.0
    assert dx[0, 0, 3, 0] == 1.0 and dx[0, 1, 3, 0] == 0.0
    assert dx.sum() == 4.0
    odd = MaxPoolLayer(0, (1, 7, 7), F64, size=2, stride=2, padding=1)
    assert odd.out_shape == (1, 4, 4)  # Darknet: (7 + 1 - 2) / 2 + 1


def test_avgpool_gradients() -> None:
    check_layer(AvgPoolLayer(0, (3, 4, 5), F64))


def test_dropout_gradients_with_a_fixed_mask() -> None:
    layer = DropoutLayer(0, (3, 4, 4), F64, probability=0.4)
    layer.rng = np.random.default_rng(7)
    state = layer.rng.bit_generator.state

    def same_mask() -> None:
        assert layer.rng is not None
        layer.rng.bit_generator.state = state

    check_layer(layer, before_forward=same_mask)
    kept = layer.mask != 0
    assert abs((1 - kept.mean()) - 0.4) < 0.15  # about p of the units dropped
    np.testing.assert_allclose(layer.mask[kept], 1 / 0.6)


def test_dropout_is_identity_at_inference() -> None:
    layer = DropoutLayer(0, (2, 3, 3), F64, probability=0.5)
    prepare(layer, 2)
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 2))
    assert layer.forward(x, train=False) is x


@pytest.mark.parametrize("groups,temperature", [(1, 1.0), (2, 1.0), (1, 2.5)])
def test_softmax_jacobian(groups: int, temperature: float) -> None:
    check_layer(SoftmaxLayer(0, (6, 1, 1), F64, groups=groups, temperature=temperature))


def test_softmax_spatial_input_jacobian() -> None:
    check_layer(SoftmaxLayer(0, (2, 2, 2), F64))


def loss_check(layer: SoftmaxLayer | CostLayer, batch: int = 4) -> None:
    rng = prepare(layer, batch)
    x = input_for(layer, batch, rng)
    n = int(np.prod(layer.in_shape))
    truth = np.zeros((n, batch))
    truth[rng.integers(0, n, batch), np.arange(batch)] = 1.0
    layer.set_truth(truth)

    def loss() -> float:
        layer.forward(x, True)
        return layer.loss_and_grad()[0]

    loss()
    g = layer.loss_and_grad()[1].copy()
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + H
        lp = loss()
        x[idx] = old - H
        lm = loss()
        x[idx] = old
        assert abs((lp - lm) / (2 * H) - g[idx]) < 1e-6, idx


def test_softmax_cross_entropy_gradient() -> None:
    loss_check(SoftmaxLayer(0, (5, 1, 1), F64))


def test_softmax_cross_entropy_value() -> None:
    layer = SoftmaxLayer(0, (3, 1, 1), F64)
    prepare(layer, 1)
    x = np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
    layer.set_truth(np.array([[0.0], [0.0], [1.0]]))
    p = layer.forward(x, True).ravel()
    np.testing.assert_allclose(p, np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    assert layer.loss_and_grad()[0] == pytest.approx(-np.log(p[2]))


def test_cost_sse_gradient() -> None:
    loss_check(CostLayer(0, (4, 1, 1), F64, scale=0.7))


@pytest.mark.parametrize("target", [1, 7, 20, 64, 10_000])
@pytest.mark.parametrize("keep", [False, True])
def test_blocked_convolution_equals_full_im2col(target: int, keep: bool) -> None:
    """Every block split (partial rows with a remainder, several rows, one block) is exact."""
    rng = np.random.default_rng(target)
    c, h, w, b, f, k = 3, 5, 6, 4, 2, 3
    x = rng.normal(size=(c, h, w, b))
    wmat = rng.normal(size=(f, c * k * k))
    xpad = np.zeros((c, h + 2, w + 2, b))
    col_ref = np.zeros((c * k * k, h * w * b))
    im2col(x, xpad, 1, k, 1, h, w, col_ref)
    out = np.zeros((f, h * w * b))
    col = np.zeros_like(col_ref) if keep else None
    pad_into(x, xpad, 1)
    conv_blocked(wmat, xpad, k, 1, h, w, out, col, target=target)
    np.testing.assert_allclose(out, wmat @ col_ref, rtol=1e-12)
    if col is not None:
        np.testing.assert_array_equal(col, col_ref)
    blocks = col_blocks(h, w, b, target)
    covered = sorted((r0 * w + w0) * b for r0, _, w0, _ in blocks)
    assert covered[0] == 0 and len(set(covered)) == len(blocks)
