"""Darknet ``.weights`` files: byte layout as Darknet writes it, bit-exact round trips."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from plinius.core.errors import FormatError, TruncatedError
from plinius.nn import Network, load_model, load_weights, parse_cfg_text, save_weights
from plinius.nn.weights import read_header, weights_nbytes

CFG = """[net]
batch=2
height=4
width=4
channels=2

[convolutional]
batch_normalize=1
filters=3
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=2
size=1
stride=1
pad=1
activation=linear

[maxpool]
size=2
stride=2

[connected]
batch_normalize=1
output=5
activation=leaky

[connected]
output=4
activation=linear

[softmax]
"""


def darknet_bytes(arrays: list[np.ndarray], seen: int, major: int = 0, minor: int = 2) -> bytes:
    if major * 10 + minor >= 2:
        head = struct.pack("<iiiQ", major, minor, 0, seen)
    else:
        head = struct.pack("<iiii", major, minor, 0, seen)
    return head + b"".join(a.astype("<f4").tobytes() for a in arrays)


def test_layout_matches_darknet_order(tmp_path: Path) -> None:
    """Darknet: conv = biases, scales, mean, variance, weights; connected = biases, weights, bn."""
    net = Network(parse_cfg_text(CFG))
    rng = np.random.default_rng(0)
    c1 = {
        "biases": rng.normal(size=3),
        "scales": rng.normal(size=3),
        "rolling_mean": rng.normal(size=3),
        "rolling_variance": rng.random(3) + 0.5,
        "weights": rng.normal(size=(3, 2, 3, 3)),
    }
    c2 = {"biases": rng.normal(size=2), "weights": rng.normal(size=(2, 3, 1, 1))}
    f1 = {
        "biases": rng.normal(size=5),
        "weights": rng.normal(size=(5, 2 * 2 * 2)),
        "scales": rng.normal(size=5),
        "rolling_mean": rng.normal(size=5),
        "rolling_variance": rng.random(5) + 0.5,
    }
    f2 = {"biases": rng.normal(size=4), "weights": rng.normal(size=(4, 5))}
    order = [
        c1["biases"], c1["scales"], c1["rolling_mean"], c1["rolling_variance"], c1["weights"],
        c2["biases"], c2["weights"],
        f1["biases"], f1["weights"], f1["scales"], f1["rolling_mean"], f1["rolling_variance"],
        f2["biases"], f2["weights"],
    ]  # fmt: skip
    path = tmp_path / "dark.weights"
    path.write_bytes(darknet_bytes(order, seen=12345))
    header = load_weights(net, path)
    assert (header.major, header.minor, header.seen) == (0, 2, 12345)
    assert net.seen == 12345
    for layer_index, values in ((0, c1), (1, c2), (3, f1), (4, f2)):
        for name, want in values.items():
            got = net.layers[layer_index].params[name]
            np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=name)
    out = tmp_path / "ours.weights"
    assert save_weights(net, out) == weights_nbytes(net)
    assert out.read_bytes() == path.read_bytes()


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    net = load_model("tiny", seed=1)
    x = np.random.default_rng(0).random((32, 784), dtype=np.float32)
    net.train_step(x, np.arange(32) % 10)
    a = tmp_path / "a.weights"
    save_weights(net, a)
    other = load_model("tiny", seed=2)
    load_weights(other, a)
    for (_, name, want), (_, _, got) in zip(
        net.param_buffers(), other.param_buffers(), strict=True
    ):
        assert want.tobytes() == got.tobytes(), name
    assert other.seen == net.seen == 32
    b = tmp_path / "b.weights"
    save_weights(other, b)
    assert a.read_bytes() == b.read_bytes()
    head = read_header(a.read_bytes())
    assert (head.major, head.minor, head.revision, head.seen) == (0, 2, 0, 32)
    assert a.stat().st_size == 20 + 4 * net.n_params()


def test_old_header_and_transposed_connected(tmp_path: Path) -> None:
    cfg = "[net]\nbatch=1\ninputs=3\n[connected]\noutput=2\nactivation=linear\n[softmax]\n"
    net = Network(parse_cfg_text(cfg))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    old = tmp_path / "old.weights"
    old.write_bytes(darknet_bytes([np.array([1.0, 2.0]), w], seen=7, major=0, minor=1))
    assert load_weights(net, old).seen == 7
    np.testing.assert_array_equal(net.layers[0].params["weights"], w)
    t = tmp_path / "t.weights"
    t.write_bytes(darknet_bytes([np.zeros(2), w.T.copy()], seen=0, major=1001, minor=0))
    load_weights(net, t)
    np.testing.assert_array_equal(net.layers[0].params["weights"], w)


def test_wrong_files_are_refused(tmp_path: Path) -> None:
    net = load_model("tiny")
    good = tmp_path / "g.weights"
    save_weights(net, good)
    data = good.read_bytes()
    short = tmp_path / "short.weights"
    short.write_bytes(data[:-8])
    with pytest.raises(TruncatedError, match="layer 5"):
        load_weights(net, short)
    long = tmp_path / "long.weights"
    long.write_bytes(data + b"\0" * 8)
    with pytest.raises(FormatError, match="8 bytes left"):
        load_weights(net, long)
    tiny_file = tmp_path / "h.weights"
    tiny_file.write_bytes(b"\0" * 6)
    with pytest.raises(TruncatedError):
        load_weights(net, tiny_file)
    with pytest.raises(FormatError, match="no such"):
        load_weights(net, tmp_path / "none.weights")
    mnist = load_model("mnist", batch=2, col_budget=0)
    with pytest.raises(TruncatedError, match=r"different \.cfg"):
        load_weights(mnist, good)
