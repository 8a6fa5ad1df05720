"""Class 5: the data headers that change behaviour are authenticated, at the CLI.

The attacker edits the owner's ``.pld`` header and the backend's copy of it (plus the sample-area
headers) to make training use a prefix of the data or make ``infer`` score a chosen subset. Every
edit must be refused with exit 2 and a one-line integrity error, and the victim's mirror must
still verify afterwards.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from plinius.format.encdata import HEADER_BYTES, MAGIC

from .conftest import CliRunner, World, assert_refused


def _backend(world: World) -> str:
    return f"tmpfs:{world.shm / 'be'}"


def _train(run_cli: CliRunner, world: World, *extra: str, data: Path | None = None) -> str:
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "3",
        "--backend",
        _backend(world),
        "--key-file",
        str(world.key),
        "--data",
        str(data or world.data),
        *extra,
        env=world.env,
    )
    return res.stderr if res.returncode else "ok"


def _edit_json(raw: bytes, old: bytes, new: bytes) -> bytes:
    """Replace ``old`` by ``new`` (same length) once inside a header JSON."""
    assert len(old) == len(new) and raw.count(old) == 1, (old, raw[:300])
    return raw.replace(old, new)


def _verify_ok(run_cli: CliRunner, world: World) -> None:
    res = run_cli(
        "verify", "--backend", _backend(world), "--key-file", str(world.key), env=world.env
    )
    assert res.returncode == 0, res.stderr
    assert "iteration 3" in res.stdout, res.stdout


def _data_files(world: World) -> tuple[Path, Path, Path]:
    be = world.shm / "be"
    (info,) = be.glob("dataset.*")
    # sample areas keep the on-disk blob name "records.<id>-<split>"
    (train,) = be.glob("records.*-train")
    (test,) = be.glob("records.*-test")
    return info, train, test


def test_cut_train_count_in_pld_is_refused(run_cli: CliRunner, world: World) -> None:
    assert _train(run_cli, world) == "ok"
    original = world.data.read_bytes()
    cut = world.root / "cut.pld"
    cut.write_bytes(_edit_json(original, b'"train": 4000', b'"train": 50  '))
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "6",
        "--backend",
        _backend(world),
        "--key-file",
        str(world.key),
        "--data",
        str(cut),
        env=world.env,
    )
    assert_refused(res, "integrity", "header", str(cut))
    assert world.data.read_bytes() == original
    _verify_ok(run_cli, world)


@pytest.mark.parametrize(
    ("old", "new"),
    [(b'"test": 1000', b'"test": 10  '), (b'"shape": [1, 28, 28]', b'"shape": [1, 28, 27]')],
    ids=["test-count", "shape"],
)
def test_edited_pld_fields_are_refused(
    run_cli: CliRunner, world: World, old: bytes, new: bytes
) -> None:
    """Test count and shape edits, in a backend that never saw the data (no cached copy)."""
    world.data.write_bytes(_edit_json(world.data.read_bytes(), old, new))
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "3",
        "--backend",
        _backend(world),
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
        env=world.env,
    )
    assert_refused(res, "integrity")
    assert not (world.shm / "be" / "mirror").exists()


def test_infer_prefix_by_editing_backend_counts_is_refused(
    run_cli: CliRunner, world: World
) -> None:
    assert _train(run_cli, world) == "ok"
    info, _, test = _data_files(world)
    info.write_bytes(_edit_json(info.read_bytes(), b'"test": 1000', b'"test": 10  '))
    raw = bytearray(test.read_bytes())
    struct.pack_into("<Q", raw, 16, 10)
    test.write_bytes(bytes(raw))
    res = run_cli(
        "infer", "--backend", _backend(world), "--key-file", str(world.key), env=world.env
    )
    assert_refused(res, "integrity", "header")
    _verify_ok(run_cli, world)


def test_infer_with_only_the_sample_area_count_cut_is_refused(
    run_cli: CliRunner, world: World
) -> None:
    assert _train(run_cli, world) == "ok"
    _, _, test = _data_files(world)
    raw = bytearray(test.read_bytes())
    struct.pack_into("<Q", raw, 16, 10)
    test.write_bytes(bytes(raw))
    res = run_cli(
        "infer", "--backend", _backend(world), "--key-file", str(world.key), env=world.env
    )
    assert_refused(res, "integrity", "sample count 10")
    _verify_ok(run_cli, world)


def test_training_with_a_cut_sample_area_is_refused(run_cli: CliRunner, world: World) -> None:
    """The backend's copy is cut (header copy and area agree): the file's header wins."""
    assert _train(run_cli, world) == "ok"
    info, train, _ = _data_files(world)
    info.write_bytes(_edit_json(info.read_bytes(), b'"train": 4000', b'"train": 50  '))
    raw = bytearray(train.read_bytes())
    struct.pack_into("<Q", raw, 16, 50)
    train.write_bytes(bytes(raw[: 64 + 50 * 3204]))
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "6",
        "--backend",
        _backend(world),
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
        env=world.env,
    )
    # the edited header copy is not the file's authenticated one: the data is loaded again
    assert res.returncode == 0, res.stderr
    assert len(train.read_bytes()) == 64 + 4000 * 3204


@pytest.mark.parametrize(
    "garbage", [b"{not json", b"", b"\0" * 4096], ids=["bad-json", "empty", "zeros"]
)
def test_corrupt_stored_header_is_a_clean_error(
    run_cli: CliRunner, world: World, garbage: bytes
) -> None:
    assert _train(run_cli, world) == "ok"
    info, _, _ = _data_files(world)
    info.write_bytes(garbage)
    res = run_cli(
        "infer", "--backend", _backend(world), "--key-file", str(world.key), env=world.env
    )
    assert_refused(res, "dataset")
    _verify_ok(run_cli, world)


def test_corrupt_pld_json_is_a_clean_error(run_cli: CliRunner, world: World) -> None:
    raw = bytearray(world.data.read_bytes())
    raw[12:20] = b"{{{{{{{{"
    world.data.write_bytes(bytes(raw))
    assert_refused(
        run_cli(
            "train",
            "--model",
            "tiny",
            "--iterations",
            "1",
            "--backend",
            _backend(world),
            "--key-file",
            str(world.key),
            "--data",
            str(world.data),
            env=world.env,
        ),
        "dataset",
    )


def test_old_format_pld_says_re_encrypt(run_cli: CliRunner, world: World) -> None:
    """A format-1 file (unauthenticated header) is refused with the command that fixes it."""
    raw = world.data.read_bytes()
    (n,) = struct.unpack("<I", raw[8:12])
    doc = json.loads(raw[12 : 12 + n])
    doc["format"] = 1
    head = json.dumps(doc).encode()
    header = (MAGIC + struct.pack("<I", len(head)) + head).ljust(HEADER_BYTES, b"\0")
    world.data.write_bytes(header + raw[HEADER_BYTES:])
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "1",
        "--backend",
        _backend(world),
        "--key-file",
        str(world.key),
        "--data",
        str(world.data),
        env=world.env,
    )
    assert_refused(res, "format 1", "plinius owner encrypt-data")


def test_header_of_another_dataset_is_refused(run_cli: CliRunner, world: World) -> None:
    """A genuine header (same key, other seed) spliced onto these samples."""
    other = world.root / "other.pld"
    res = run_cli(
        "owner",
        "encrypt-data",
        "--key-file",
        str(world.key),
        "--out",
        str(other),
        "--seed",
        "1",
        env=world.env,
    )
    assert res.returncode == 0, res.stderr
    spliced = world.root / "spliced.pld"
    spliced.write_bytes(other.read_bytes()[:HEADER_BYTES] + world.data.read_bytes()[HEADER_BYTES:])
    res = run_cli(
        "train",
        "--model",
        "tiny",
        "--iterations",
        "3",
        "--backend",
        _backend(world),
        "--key-file",
        str(world.key),
        "--data",
        str(spliced),
        env=world.env,
    )
    assert_refused(res, "integrity", "sample")
