"""Byte-flip fuzzing of a committed file mirror.

Every flipped byte must either be refused with a plinius error (exit 2 at the CLI), or lie
provably outside the authenticated bytes (the padding between records) and then be harmless:
the same version, iteration and bit-identical weights. Every header byte is flipped; manifest,
record and padding bytes are sampled (all of them under ``PLINIUS_LONG=1``).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from plinius.backends.registry import open_backend
from plinius.core.crypto import OVERHEAD, make_engine, read_key_file
from plinius.core.errors import PliniusError
from plinius.enclave.platform import SimulatedPlatform
from plinius.format.mirror import HEADER_SIZE, MirrorStore
from plinius.session.owner import open_mirror, verify_mirror

from .conftest import CliRunner, World, assert_refused

LONG = bool(os.environ.get("PLINIUS_LONG"))


def _digest(spec: str, world: World, platform: SimulatedPlatform) -> tuple[int, int, str] | str:
    engine = make_engine(read_key_file(world.key))
    try:
        with open_backend(spec) as b:
            info = verify_mirror(b, engine, platform)
            net, iteration, _ = open_mirror(b, engine, platform)
    except PliniusError as exc:
        return type(exc).__name__
    h = hashlib.sha256()
    for _, _, arr in net.param_buffers() + net.optimizer_buffers():
        h.update(arr.tobytes())
    return info.version, iteration, h.hexdigest()


@pytest.mark.slow
def test_every_flip_is_refused_or_harmless(run_cli: CliRunner, world: World) -> None:
    spec = f"tmpfs:{world.shm / 'm'}"
    res = run_cli(
        "train", "--model", "tiny", "--backend", spec, "--key-file", str(world.key),
        "--data", str(world.data), "--iterations", "3", env=world.env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    platform = SimulatedPlatform(world.platform, state_dir=world.state)
    good = _digest(spec, world, platform)
    assert isinstance(good, tuple)
    with open_backend(spec) as b:
        info = MirrorStore(b, make_engine(read_key_file(world.key)), None).peek()
    assert info is not None
    path: Path = world.shm / "m" / "mirror"
    original = path.read_bytes()
    authenticated = bytearray(len(original))  # 1 where a byte is covered by a tag
    authenticated[:HEADER_SIZE] = b"\1" * HEADER_SIZE
    spans = [(e.offset, e.offset + e.length + OVERHEAD) for e in info.entries]
    m_at = int.from_bytes(original[72:80], "little")  # header field: manifest offset
    assert m_at >= max(z for _, z in spans)
    spans.append((m_at, len(original)))
    for a, z in spans:
        authenticated[a:z] = b"\1" * (z - a)
    rng = random.Random(1)
    manifest = list(range(m_at, len(original)))
    positions = list(range(HEADER_SIZE))
    positions += manifest if LONG else rng.sample(manifest, min(300, len(manifest)))
    records = [i for a, z in spans[:-1] for i in range(a, z)]
    padding = [i for i in range(len(original)) if not authenticated[i]]
    positions += records if LONG else rng.sample(records, min(400, len(records)))
    positions += padding if LONG else rng.sample(padding, min(200, len(padding)))
    outcomes: dict[str, int] = {}
    try:
        for i in positions:
            raw = bytearray(original)
            raw[i] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(raw))
            got = _digest(spec, world, platform)
            if isinstance(got, str):
                assert authenticated[i], f"byte {i} outside authenticated data refused: {got}"
                outcomes[got] = outcomes.get(got, 0) + 1
            else:
                assert not authenticated[i], f"flip of authenticated byte {i} accepted"
                assert got == good, f"flip of padding byte {i} changed what restores"
                outcomes["accepted-harmless"] = outcomes.get("accepted-harmless", 0) + 1
        # a few through the real CLI: exit 2, one line, no traceback
        for i in rng.sample(range(HEADER_SIZE), 4) + rng.sample(records, 4):
            raw = bytearray(original)
            raw[i] ^= 0x80
            path.write_bytes(bytes(raw))
            assert_refused(run_cli("verify", "--backend", spec, "--key-file", str(world.key),
                                   env=world.env))  # fmt: skip
    finally:
        path.write_bytes(original)
    print(f"\nmirror byte-flip fuzz: {len(positions)} flips of {len(original)} B: {outcomes}")
    assert outcomes.get("accepted-harmless", 0) > 0 and sum(outcomes.values()) == len(positions)
    assert _digest(spec, world, platform) == good
