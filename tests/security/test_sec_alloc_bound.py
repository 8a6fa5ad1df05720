"""Nothing read from storage sizes an allocation before it is trusted (review 22, breaks 4, 7).

A mirror's plaintext header names its blob size and its sealed manifest length; both are the
attacker's. The platform records them with each save's stamp, so a reader refuses any other
extent before it allocates or reads what the header claims. Every attack here runs the real CLI
under ``RLIMIT_AS`` = 1 GiB: it must exit 2 with one line, never be killed or run out of memory.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess

import pytest
from cli_runner import cli_argv, train_args

from plinius.backends import open_backend
from plinius.backends.testing import raw_get, raw_put
from plinius.enclave.counter import PLATFORM_MEASUREMENT, MirrorCounters, SlotState, slot_name
from plinius.enclave.platform import SimulatedPlatform
from plinius.enclave.sealing import seal
from plinius.enclave.slot_state import _MAGIC_V1, _STATE_V1
from plinius.format.mirror import MAX_MANIFEST

from .conftest import CliRunner, World, assert_refused

LIMIT = 1 << 30
#: header fields: blob size at 64 (Q), manifest offset at 72 (Q), sealed manifest length at 80 (I)
_SIZES = struct.Struct("<QQI")


def limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run_limited(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with at most 1 GiB of address space."""
    return subprocess.run(
        cli_argv(*args),
        capture_output=True,
        text=True,
        env=world.env,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
        preexec_fn=limited,
    )


def verify(world: World, spec: str) -> subprocess.CompletedProcess[str]:
    return run_limited(world, "verify", "--backend", spec, "--key-file", str(world.key))


def trained(run_cli: CliRunner, world: World, spec: str) -> bytes:
    res = run_cli(*train_args(spec, world.key, world.data, 2), env=world.env)
    assert res.returncode == 0, res.stderr
    assert verify(world, spec).returncode == 0  # the limit itself lets a real verify run
    with open_backend(spec) as b:
        return raw_get(b, "mirror")


def with_sizes(blob: bytes, total: int, m_at: int, m_len: int) -> bytes:
    out = bytearray(blob)
    _SIZES.pack_into(out, 64, total, m_at, m_len)
    return bytes(out)


@pytest.mark.parametrize("kind", ["tmpfs", "ssd"])
def test_huge_manifest_claim_is_refused_before_allocating(
    run_cli: CliRunner, world: World, kind: str
) -> None:
    """Break 4: a header claiming a 4 GiB manifest over a (sparse) blob of matching size used
    to allocate 4 GiB before the manifest tag was checked."""
    spec = f"{kind}:{world.shm / kind}"
    blob = trained(run_cli, world, spec)
    _, m_at, _ = _SIZES.unpack_from(blob, 64)
    m_len = (4 << 30) - 4097
    path = world.shm / kind / "mirror"
    path.write_bytes(with_sizes(blob, m_at + m_len, m_at, m_len))
    os.truncate(path, m_at + m_len)  # the blob is as large as the header says (sparse)
    res = verify(world, spec)
    assert_refused(res, "the platform recorded", "the blob was altered")
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["tmpfs", "ssd", "romulus"])
def test_bytes_appended_after_the_manifest_are_refused(
    run_cli: CliRunner, world: World, kind: str
) -> None:
    """Break 7: FORMAT.md says a manifest not ending at the blob size is a FormatError; the
    code used to accept 4,096 bytes appended to a mirror."""
    spec = f"{kind}:{world.shm / kind}" + (".pool" if kind == "romulus" else "")
    blob = trained(run_cli, world, spec)
    with open_backend(spec) as b:
        raw_put(b, "mirror", blob + bytes(4096))
    res = verify(world, spec)
    assert_refused(res, f"is {len(blob) + 4096} B, but its header says {len(blob)} B")


@pytest.mark.parametrize("kind", ["tmpfs", "romulus"])
def test_other_extent_with_the_committed_stamp_is_refused(
    run_cli: CliRunner, world: World, kind: str
) -> None:
    """The committed stamp with other sizes (a manifest moved, the blob cut and re-headed) is
    refused by the platform's record of the save, before the manifest is read."""
    spec = f"{kind}:{world.shm / kind}" + (".pool" if kind == "romulus" else "")
    blob = trained(run_cli, world, spec)
    total, m_at, m_len = _SIZES.unpack_from(blob, 64)
    forged = with_sizes(blob, total + 64, m_at + 64, m_len)
    with open_backend(spec) as b:
        raw_put(b, "mirror", forged[:m_at] + bytes(64) + forged[m_at:total])
    assert_refused(verify(world, spec), "the platform recorded", f"{total} B")


def test_record_without_extents_still_bounds_the_manifest(run_cli: CliRunner, world: World) -> None:
    """A platform record written before extents existed (``PLNSLOT1``) still opens; a mirror
    it names is then bounded by ``MAX_MANIFEST`` instead."""
    spec = f"tmpfs:{world.shm / 'old'}"
    blob = trained(run_cli, world, spec)
    counters = MirrorCounters(SimulatedPlatform(world.platform))
    slot = slot_name("tmpfs", str(world.shm / "old"), "mirror")
    state = counters.read(slot)
    assert state is not None and state.committed_extent is not None
    c = state.committed
    assert c is not None
    v1 = _STATE_V1.pack(
        _MAGIC_V1, state.high, True, SlotState(0, c, None).pack()[17:57], False, bytes(40)
    )
    sealed = seal(counters.platform, PLATFORM_MEASUREMENT, f"slot:{slot}", v1)
    (counters.dir / slot).write_bytes(sealed)
    assert counters.read(slot) == SlotState(state.high, c, None)
    assert verify(world, spec).returncode == 0  # an old record accepts its mirror
    _, m_at, _ = _SIZES.unpack_from(blob, 64)
    m_len = MAX_MANIFEST + 4096
    path = world.shm / "old" / "mirror"
    path.write_bytes(with_sizes(blob, m_at + m_len, m_at, m_len))
    os.truncate(path, m_at + m_len)
    assert_refused(verify(world, spec), "manifest, more than any mirror has")


@pytest.mark.parametrize("area", ["header", "train", "test"])
def test_stored_dataset_of_another_size_is_refused_before_mapping(
    run_cli: CliRunner, world: World, area: str
) -> None:
    """Review 22 follow-up: the stored dataset header and sample areas were read or mapped at
    whatever size their files had (8 GiB: ENOMEM, exit 70). Their sizes follow from the
    authenticated header: another size is refused (infer), or reloaded from the owner's file
    (train), before anything is mapped."""
    spec = f"tmpfs:{world.shm / 'd'}"
    trained(run_cli, world, spec)
    (name,) = [p for p in (world.shm / "d").iterdir() if p.name.startswith("dataset.")]
    suffix = name.name.removeprefix("dataset.")
    target = name if area == "header" else world.shm / "d" / f"records.{suffix}-{area}"
    assert target.exists(), sorted(p.name for p in (world.shm / "d").iterdir())
    os.truncate(target, 8 << 30)
    if area != "train":  # infer reads the header and the test split only
        res = run_limited(world, "infer", "--backend", spec, "--key-file", str(world.key))
        assert_refused(res, "B, but the authenticated" if area == "test" else "dataset header is")
    res = run_limited(world, *train_args(spec, world.key, world.data, 3))
    assert res.returncode == 0, res.stderr  # the owner's file replaces what was altered
