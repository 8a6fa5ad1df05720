"""Attacks on the platform directory itself, on both platforms: what whoever holds it can do.

On the simulated CPU the directory *is* the CPU (the threat model trusts it): a copy or an
older copy put back is accepted, as these tests show. On the tpm platform it is attacker-held
storage: copying it to another TPM, rolling it back, deleting or altering its table, replacing
its key, deleting or redefining the NV counter (who holds the owner hierarchy's auth decides
which of these the TPM itself prevents) and forging quotes are refused, in one line, through
the real CLI against a real swtpm.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from plinius.core.errors import PliniusError
from plinius.enclave import tpm_link
from plinius.lab.swtpm import Swtpm

from .conftest import CliRunner, World, assert_refused
from .test_sec_freshness import assert_all_refuse, spec_for, train, verify


def _snapshot(world: World, spec: str, name: str) -> Path:
    """The platform directory and the mirror, as the attacker copies them."""
    snap = world.root / name
    shutil.copytree(world.platform, snap / "platform")
    shutil.copytree(Path(spec.split(":", 1)[1]), snap / "mirror")
    return snap


def _put_back(world: World, spec: str, snap: Path) -> None:
    shutil.rmtree(world.platform)
    shutil.copytree(snap / "platform", world.platform)
    loc = Path(spec.split(":", 1)[1])
    shutil.rmtree(loc)
    shutil.copytree(snap / "mirror", loc)


@pytest.mark.parametrize("platform_kind", ["sim", "tpm"])
def test_platform_directory_rolled_back_with_the_mirror(
    run_cli: CliRunner, world: World, platform_kind: str
) -> None:
    """The directory and the mirror of iteration 2 put back after iteration 5: the simulated
    CPU accepts it (its directory is trusted: whoever holds it is the CPU); the TPM refuses,
    its NV counter has moved past the old table."""
    spec = spec_for(world, "tmpfs", "victim")
    train(run_cli, world, spec, 2)
    old = _snapshot(world, spec, "old")
    train(run_cli, world, spec, 5)
    new = _snapshot(world, spec, "new")
    _put_back(world, spec, old)
    if platform_kind == "sim":
        assert verify(run_cli, world, spec)["iteration"] == 2  # the simulation's limit
        return
    assert_all_refuse(run_cli, world, spec, "rollback refused", "older table")
    _put_back(world, spec, new)
    assert verify(run_cli, world, spec)["iteration"] == 5


@pytest.mark.parametrize("platform_kind", ["sim", "tpm"])
def test_platform_directory_copied_to_another_machine(
    run_cli: CliRunner, world: World, platform_kind: str, tmp_path_factory: Any
) -> None:
    """Another machine given the directory, the state directory and the mirror: the simulated
    CPU's copy derives every key (it verifies the mirror); a second TPM loads none of the
    first TPM's blobs, so nothing opens."""
    spec = spec_for(world, "tmpfs", "victim")
    train(run_cli, world, spec, 3)
    if platform_kind == "sim":
        copy = world.root / "stolen"
        shutil.copytree(world.platform, copy)
        env = {**world.env, "PLINIUS_PLATFORM_DIR": str(copy)}
        res = run_cli("verify", "--backend", spec, "--key-file", str(world.key), env=env)
        assert res.returncode == 0, res.stderr
        return
    other_base = tmp_path_factory.mktemp("other-tpm")
    with Swtpm(other_base) as other:  # manufactured anew: other seeds, another EK
        stolen = world.root / "stolen"
        shutil.copytree(world.platform, stolen)
        env = {**world.env, "PLINIUS_PLATFORM": other.spec(stolen)}
        for cmd in (["verify"], ["infer"]):
            res = run_cli(*cmd, "--backend", spec, "--key-file", str(world.key), env=env)
            assert_refused(res, "does not load on this TPM", "another TPM")


@pytest.fixture
def tpm_world(world: World) -> World:
    assert world.spec is not None and world.spec.startswith("tpm:")
    return world


@pytest.mark.parametrize("platform_kind", ["tpm"])
def test_table_deleted_altered_or_replaced_is_refused(run_cli: CliRunner, tpm_world: World) -> None:
    world = tpm_world
    spec = spec_for(world, "tmpfs", "victim")
    train(run_cli, world, spec, 3)
    table = world.platform / "freshness.table"
    good = table.read_bytes()
    table.unlink()
    assert_all_refuse(run_cli, world, spec, "freshness table", "missing", "deleted")
    bad = bytearray(good)
    bad[-5] ^= 1
    table.write_bytes(bytes(bad))
    assert_all_refuse(run_cli, world, spec, "does not authenticate")
    table.write_bytes(good)
    assert verify(run_cli, world, spec)["iteration"] == 3


@pytest.mark.parametrize("platform_kind", ["tpm"])
def test_key_blob_replaced_is_refused(run_cli: CliRunner, tpm_world: World) -> None:
    """A keyed-hash key whose bits the attacker chose (not made inside the TPM) is refused
    before use; a TPM-made key of the attacker's gives keys under which nothing opens."""
    world = tpm_world
    spec = spec_for(world, "tmpfs", "victim")
    train(run_cli, world, spec, 3)
    blob = world.platform / "hmac-key.tpm"
    good = blob.read_bytes()
    t = tpm_link.pytss()
    link = tpm_link.TpmLink(f"swtpm:host=127.0.0.1,port={world.tpm.port}", "swtpm")
    with link.session() as e, tpm_link._srk(e) as srk:
        a = t.constants.TPMA_OBJECT
        tmpl = t.types.TPM2B_PUBLIC.parse(
            "hmac:sha256",
            objectAttributes=a.FIXEDTPM | a.FIXEDPARENT | a.USERWITHAUTH | a.SIGN_ENCRYPT,
        )
        sens = t.types.TPM2B_SENSITIVE_CREATE(
            t.types.TPMS_SENSITIVE_CREATE(data=t.types.TPM2B_SENSITIVE_DATA(b"k" * 32))
        )
        priv, pub, *_ = e.create(srk, sens, tmpl)
        known = bytes(pub.marshal()) + bytes(priv.marshal())
        theirs = tpm_link.create_hmac_key(e)
    blob.write_bytes(known)
    assert_all_refuse(run_cli, world, spec, "not a keyed-hash key made inside the TPM")
    blob.write_bytes(theirs)  # refused where the first thing under it is opened
    assert_all_refuse(run_cli, world, spec, "integrity check failed", "another")
    blob.write_bytes(good)
    assert verify(run_cli, world, spec)["iteration"] == 3


def _undefine(world: World, auth: bytes = b"") -> None:
    link = tpm_link.TpmLink(f"swtpm:host=127.0.0.1,port={world.tpm.port}", "swtpm")
    t = tpm_link.pytss()
    with link.session() as e:
        e.tr_set_auth(t.constants.ESYS_TR.OWNER, auth)
        e.nv_undefine_space(e.tr_from_tpmpublic(tpm_link_index()), t.constants.ESYS_TR.OWNER)


def tpm_link_index() -> int:
    from plinius.enclave.tpm_platform import DEFAULT_NV_INDEX

    return DEFAULT_NV_INDEX


@pytest.mark.parametrize("platform_kind", ["tpm"])
def test_counter_deleted_or_redefined_is_refused(run_cli: CliRunner, tpm_world: World) -> None:
    """With the owner hierarchy's auth (empty on a fresh swtpm) the attacker deletes the NV
    counter: refused. Redefined as a counter it restarts at the TPM's highest count, never
    lower: the latest table is still the only one accepted (an older one put back is refused,
    nothing was gained). Redefined as an ordinary index (whose value could be written back):
    refused."""
    world = tpm_world
    spec = spec_for(world, "tmpfs", "victim")
    train(run_cli, world, spec, 2)
    old = _snapshot(world, spec, "old")
    train(run_cli, world, spec, 3)
    new = _snapshot(world, spec, "new")
    _undefine(world)
    assert_all_refuse(run_cli, world, spec, "counter was deleted or redefined")
    link = tpm_link.TpmLink(f"swtpm:host=127.0.0.1,port={world.tpm.port}", "swtpm")
    with link.session() as e:  # redefined as a counter: new, never incremented
        tpm_link.define_counter(e, tpm_link_index(), b"")
    assert_all_refuse(run_cli, world, spec, "counter was deleted or redefined")
    with link.session() as e:  # and moved: it starts at the highest count the TPM has seen
        found = tpm_link.open_counter(e, tpm_link_index())
        assert found is not None
        tpm_link.counter_increment(e, found[0])
    _put_back(world, spec, old)
    assert_all_refuse(run_cli, world, spec, "rollback refused")
    _put_back(world, spec, new)
    assert verify(run_cli, world, spec)["iteration"] == 3
    _undefine(world)
    t = tpm_link.pytss()
    nv = t.constants.TPMA_NV
    with link.session() as e:  # an ordinary index in its place
        area = t.types.TPMS_NV_PUBLIC(
            nvIndex=tpm_link_index(),
            nameAlg=t.constants.TPM2_ALG.SHA256,
            attributes=nv.AUTHWRITE | nv.AUTHREAD | nv.NO_DA,
            dataSize=8,
        )
        e.nv_define_space(b"", t.types.TPM2B_NV_PUBLIC(area), t.constants.ESYS_TR.OWNER)
    assert_all_refuse(run_cli, world, spec, "is not a monotonic counter")


@pytest.mark.parametrize("platform_kind", ["tpm"])
def test_owner_auth_set_keeps_the_counter_from_the_attacker(
    run_cli: CliRunner, tpm_world: World
) -> None:
    """What the design assumes: the machine's owner sets the owner hierarchy's auth. plinius
    needs it once, to define the counter (``$PLINIUS_TPM_OWNER_AUTH``); an attacker without it
    cannot delete the counter (the TPM refuses). (What TPM access itself allows: README.)"""
    world = tpm_world
    t = tpm_link.pytss()
    link = tpm_link.TpmLink(f"swtpm:host=127.0.0.1,port={world.tpm.port}", "swtpm")
    with link.session() as e:
        e.hierarchy_change_auth(t.constants.ESYS_TR.OWNER, b"owner-secret")
    spec = spec_for(world, "tmpfs", "victim")
    res = run_cli(
        "train", "--model", "tiny", "--backend", spec, "--key-file", str(world.key),
        "--data", str(world.data), "--iterations", "2", env=world.env,
    )  # fmt: skip
    assert_refused(res, "TPM", "auth")  # defining the counter needs the owner's auth
    env = {**world.env, "PLINIUS_TPM_OWNER_AUTH": "owner-secret"}
    res = run_cli(
        "train", "--model", "tiny", "--backend", spec, "--key-file", str(world.key),
        "--data", str(world.data), "--iterations", "3", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    with pytest.raises(PliniusError, match="TPM at swtpm"):
        _undefine(world)  # the attacker, without the owner's auth
    assert verify(run_cli, world, spec)["iteration"] == 3


@pytest.mark.parametrize("platform_kind", ["tpm"])
def test_forged_or_foreign_quotes_are_refused(tpm_world: World, tmp_path_factory: Any) -> None:
    """The owner's checks: another CA bundle, a quote for another measurement, an altered
    quote, and an attestation key from another TPM are each refused before any key is sent."""
    import json

    from plinius.enclave.attestation import AttestationError, report_data_for
    from plinius.enclave.platform import open_platform
    from plinius.enclave.tpm_attest import TpmVerifier

    world = tpm_world
    assert world.spec is not None
    p = open_platform(world.spec, state_dir=world.state)
    m, k = b"m" * 32, b"k" * 32
    quote = p.attest(m, report_data_for(k))
    verifier = p.owner_verifier()
    verifier(quote, m, k)  # the genuine quote passes
    for junk in (b"[" * 60000, b"{}", b"x" * 70000):  # nested, empty, oversized: one line each
        with pytest.raises(AttestationError, match=r"malformed|more than"):
            verifier(junk, m, k)
    with pytest.raises(AttestationError, match="measurement"):
        verifier(quote, b"n" * 32, k)
    doc = json.loads(quote)
    doc["attest"] = doc["attest"][:-2] + ("00" if doc["attest"][-2:] != "00" else "01")
    with pytest.raises(AttestationError, match="signature does not verify"):
        verifier(json.dumps(doc).encode(), m, k)
    base = tmp_path_factory.mktemp("foreign-tpm")
    with Swtpm(base) as other:
        with tempfile.TemporaryDirectory() as d:
            foreign = open_platform(other.spec(Path(d) / "p"), state_dir=Path(d) / "s")
            fq = json.loads(foreign.attest(m, report_data_for(k)))
        wrong_ca = TpmVerifier(other.bundle.read_bytes(), "other CA", p.activate_credential)
        with pytest.raises(AttestationError, match="does not chain to the trust root"):
            wrong_ca(quote, m, k)
        spliced = {**json.loads(quote), "ak": fq["ak"], "attest": fq["attest"]}
        spliced["signature"] = fq["signature"]  # the other TPM's AK and quote, our EK
        with pytest.raises(AttestationError, match="could not activate the owner's credential"):
            verifier(json.dumps(spliced).encode(), m, k)
