"""Byte-flip fuzzer for ``.pld`` files and the sample areas stored in a backend.

Every byte of each header region is flipped (and a seeded sample elsewhere); each mutant must be
refused with a plinius error, or decode to exactly the original data (the flip was outside
authenticated bytes and harmless). Anything else (accepted different data, a traceback-class
exception) fails. In-process for speed through the same functions the CLI calls
(``read_header``/``iter_sealed`` for the file, ``PMData.stored``/``read_batch`` for ``infer``),
plus a handful of flips through the real CLI. Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from plinius.backends import open_backend
from plinius.core.crypto import Engine, make_engine
from plinius.core.errors import PliniusError
from plinius.format.encdata import (
    HEADER_BYTES,
    SPLITS,
    DatasetInfo,
    encrypt_dataset,
    iter_sealed,
    read_header,
    sample_aad,
)
from plinius.format.pmdata import PMData

from .conftest import CliRunner, World, assert_refused

KEY = b"f" * 16
SAMPLE = 300
Decoded = tuple[DatasetInfo, dict[str, bytes]]


def _flip(raw: bytes, at: int) -> bytes:
    out = bytearray(raw)
    out[at] ^= 1 << (at % 8)
    return bytes(out)


@pytest.fixture
def engine() -> Engine:
    return make_engine(KEY)


@pytest.fixture
def pld(tmp_path: Path, engine: Engine) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path / "small.pld"
    splits = {
        "train": (rng.random((6, 16), dtype=np.float32), rng.integers(0, 3, 6)),
        "test": (rng.random((4, 16), dtype=np.float32), rng.integers(0, 3, 4)),
    }
    encrypt_dataset(path, engine, "fuzz", splits, (1, 4, 4), 3)
    return path


def _decode_file(path: Path, engine: Engine) -> Decoded:
    info, _ = read_header(path, engine)
    out: dict[str, bytes] = {}
    for split in SPLITS:
        plain = bytearray()
        row = np.empty(info.features + info.classes, np.float32)
        for i, sealed in enumerate(iter_sealed(path, info, split)):
            aad = sample_aad(info.dataset_id, split, i, info.counts[split])
            engine.decrypt_into(aad, sealed, row, f"{split} sample {i}")
            plain += row.tobytes()
        out[split] = bytes(plain)
    return info, out


def _classify(decode: Callable[[], Decoded], original: Decoded, outcomes: Counter[str]) -> None:
    try:
        got = decode()
    except PliniusError as exc:
        outcomes[f"refused:{type(exc).__name__}"] += 1
        return
    assert got == original, "a flipped byte was accepted and changed the decoded data"
    outcomes["harmless"] += 1


def _report(name: str, outcomes: Counter[str]) -> None:
    total = sum(outcomes.values())
    detail = ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
    print(f"\n[fuzz] {name}: {total} cases: {detail}")


@pytest.mark.slow
def test_fuzz_pld_file(pld: Path, engine: Engine) -> None:
    raw = pld.read_bytes()
    original = _decode_file(pld, engine)
    positions = list(range(HEADER_BYTES))
    positions += random.Random(1).sample(range(HEADER_BYTES, len(raw)), SAMPLE)
    outcomes: Counter[str] = Counter()
    for at in positions:
        pld.write_bytes(_flip(raw, at))
        _classify(lambda: _decode_file(pld, engine), original, outcomes)
    for cut in (0, 7, 12, 100, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 50, len(raw) - 1):
        pld.write_bytes(raw[:cut])
        _classify(lambda: _decode_file(pld, engine), original, outcomes)
    pld.write_bytes(raw + b"\0" * 104)
    _classify(lambda: _decode_file(pld, engine), original, outcomes)
    _report(".pld header (every byte) + samples (some) + cuts", outcomes)
    # every header byte is under the header tag: no header flip may be harmless
    assert outcomes["harmless"] == 0
    assert sum(outcomes.values()) == len(positions) + 9


@pytest.mark.slow
def test_fuzz_stored_sample_areas(pld: Path, engine: Engine, shm_dir: Path) -> None:
    spec = f"tmpfs:{shm_dir / 'be'}"
    with open_backend(spec) as be:
        areas, _ = PMData.ensure_loaded(be, engine, pld, SPLITS)
    info = areas["train"].info
    be_dir = shm_dir / "be"
    header_file = be_dir / f"dataset.{info.dataset_id.hex()}"
    # sample areas keep the on-disk blob name "records.<id>-<split>"
    area_files = {s: be_dir / f"records.{info.dataset_id.hex()}-{s}" for s in SPLITS}

    def decode() -> Decoded:
        with open_backend(spec) as b:
            out: dict[str, bytes] = {}
            for split in SPLITS:
                data = PMData.stored(b, engine, info.dataset_id, split)
                n = len(data)
                x = np.empty((n, info.features), np.float32)
                y = np.empty((n, info.classes), np.float32)
                data.read_batch(np.arange(n), x, y)
                out[split] = x.tobytes() + y.tobytes()
            return data.info, out

    original = decode()
    rng = random.Random(2)
    cases: list[tuple[Path, int]] = [(header_file, i) for i in range(HEADER_BYTES)]
    for split, f in area_files.items():
        size = f.stat().st_size
        cases += [(f, i) for i in range(64)]  # the whole area header
        cases += [(f, i) for i in rng.sample(range(64, size), 60)]
        assert size == 64 + info.counts[split] * info.sealed_bytes
    outcomes: Counter[str] = Counter()
    for f, at in cases:
        raw = f.read_bytes()
        f.write_bytes(_flip(raw, at))
        _classify(decode, original, outcomes)
        f.write_bytes(raw)
    for f in (header_file, *area_files.values()):
        raw = f.read_bytes()
        for cut in (0, 10, 63, 64, len(raw) - 1):
            f.write_bytes(raw[:cut])
            _classify(decode, original, outcomes)
        f.write_bytes(raw)
    _report("backend dataset header + sample areas (headers every byte, some samples)", outcomes)
    assert outcomes["harmless"] == 0
    assert decode() == original


@pytest.mark.slow
def test_fuzz_through_the_cli(run_cli: CliRunner, world: World) -> None:
    raw = world.data.read_bytes()
    outcomes: Counter[str] = Counter()
    # magic, JSON length, inside the JSON (counts area), zero padding, the tag, a sample
    for at in (3, 9, 14, 150, 2000, HEADER_BYTES - 5, HEADER_BYTES + 100):
        world.data.write_bytes(_flip(raw, at))
        res = run_cli(
            *("train", "--model", "tiny", "--iterations", "2"),
            *("--backend", f"tmpfs:{world.shm / f'f{at}'}"),
            *("--key-file", str(world.key), "--data", str(world.data)),
            env=world.env,
        )
        if at < HEADER_BYTES:
            assert_refused(res)
            outcomes["pld refused"] += 1
        else:  # a sample: refused when its batch is decrypted, else never read
            assert res.returncode in (0, 2), res.stderr
            assert "Traceback" not in res.stderr
            outcomes["pld sample " + ("refused" if res.returncode else "not read")] += 1
    world.data.write_bytes(raw)
    spec = f"tmpfs:{world.shm / 'be'}"
    res = run_cli(
        *("train", "--model", "tiny", "--iterations", "2", "--backend", spec),
        *("--key-file", str(world.key), "--data", str(world.data)),
        env=world.env,
    )
    assert res.returncode == 0, res.stderr
    (stored,) = (world.shm / "be").glob("dataset.*")
    (test_area,) = (world.shm / "be").glob("records.*-test")
    for f, at in ((stored, 60), (stored, 1000), (stored, HEADER_BYTES - 1), (test_area, 17)):
        good = f.read_bytes()
        f.write_bytes(_flip(good, at))
        res = run_cli("infer", "--backend", spec, "--key-file", str(world.key), env=world.env)
        assert_refused(res)
        outcomes["backend refused"] += 1
        f.write_bytes(good)
    res = run_cli("infer", "--backend", spec, "--key-file", str(world.key), env=world.env)
    assert res.returncode == 0, res.stderr
    _report("through the CLI", outcomes)
