"""The TPM 2.0 commands the ``tpm`` platform uses, through tpm2-pytss (ESAPI): a keyed-hash key
that never leaves the TPM, one NV counter, and quotes by an attestation key under the EK.

Each use opens its own short connection (:meth:`TpmLink.session`) and flushes every transient
object it loaded before closing it: swtpm (like ``/dev/tpm0``) has no resource manager, so
objects a process left loaded would stay in the TPM's three transient slots after it is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from plinius.core.errors import ConfigError

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

T = TypeVar("T")
#: TPM_RC_OBJECT_MEMORY: no transient object slot left
_RC_OBJECT_MEMORY = 0x902
#: how to get the extra; tpm2-pytss builds against the TSS2 headers
TPM_INSTALL_HINT = (
    "pip install 'plinius[tpm]' (tpm2-pytss; building it needs libtss2-dev and pkg-config: "
    "apt-get install libtss2-dev pkg-config)"
)
#: the owner hierarchy's authorisation, needed once to define the NV counter
OWNER_AUTH_ENV = "PLINIUS_TPM_OWNER_AUTH"
#: the persistent RSA EK (TCG EK profile), and the NV index of its certificate
EK_HANDLE = 0x81010001
EK_CERT_INDEX = 0x01C00002
#: the PCR the enclave measurement is extended into for a quote: 23, "application support",
#: resettable from locality 0, so each quote starts it from zeros
QUOTE_PCR = 23


def pytss() -> Any:
    """tpm2_pytss, or the one-line install hint (the extra is optional)."""
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # ESYS logs expected TPM errors to stderr
    try:
        import tpm2_pytss
    except ImportError:
        raise ConfigError(f"the tpm platform needs tpm2-pytss: {TPM_INSTALL_HINT}") from None
    return tpm2_pytss


def owner_auth() -> bytes:
    """The owner hierarchy's authorisation value (``$PLINIUS_TPM_OWNER_AUTH``, default empty)."""
    return os.environ.get(OWNER_AUTH_ENV, "").encode()


def tpm_error(exc: BaseException) -> str:
    """A TSS2 error as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class CounterInfo:
    """The public area of an NV index, as far as freshness cares."""

    is_counter: bool
    written: bool
    attributes: int


class TpmLink:
    """One TPM, named by its TCTI (``device:/dev/tpmrm0`` or ``swtpm:host=H,port=P``)."""

    def __init__(self, tcti: str, what: str) -> None:
        self.tcti = tcti
        self.what = what
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def session(self) -> Iterator[ESAPI]:
        """An ESAPI connection for one short use; TPM errors become one-line ConfigErrors."""
        t = pytss()
        with self._lock:
            try:
                esapi = t.ESAPI(self.tcti)
            except Exception as exc:  # TSS2_Exception, or a TCTI that cannot connect
                raise ConfigError(
                    f"cannot reach the TPM at {self.what}: {tpm_error(exc)}"
                ) from None
            try:
                yield esapi
            except t.TSS2_Exception as exc:
                raise ConfigError(f"TPM at {self.what}: {tpm_error(exc)}") from None
            finally:
                with contextlib.suppress(Exception):
                    esapi.close()

    def run(self, use: Callable[[ESAPI], T]) -> T:
        """``use`` on a fresh connection; when the TPM's transient slots are full (objects a
        killed process left loaded: a TPM without a resource manager keeps them), they are
        flushed and ``use`` runs once more."""
        t = pytss()
        with self.session() as e:
            try:
                return use(e)
            except t.TSS2_Exception as exc:
                if exc.rc & 0xFFF != _RC_OBJECT_MEMORY:
                    raise
            _flush_leftovers(e)
            return use(e)


def _flush_leftovers(e: ESAPI) -> None:
    t = pytss()
    c = t.constants
    _, data = e.get_capability(c.TPM2_CAP.HANDLES, int(c.TPM2_HT.TRANSIENT) << 24, 64)
    for handle in list(data.data.handles):
        with contextlib.suppress(t.TSS2_Exception):
            e.flush_context(e.tr_from_tpmpublic(int(handle)))


# --- the keyed-hash key ---------------------------------------------------------------------


#: the persistent storage root key's handle (the TCG's recommended SRK handle)
SRK_HANDLE = 0x81000001


def _srk_template() -> Any:
    t = pytss()
    return t.types.TPM2B_PUBLIC.parse(
        "ecc256:aes128cfb",
        objectAttributes=t.constants.TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS,
    )


@contextlib.contextmanager
def _srk(e: ESAPI, *, persist: bool = False) -> Iterator[Any]:
    """The owner hierarchy's storage root key: the persistent one at :data:`SRK_HANDLE` (no
    auth needed to use it), else the primary re-made from the owner seed (same template, same
    key; ECC P-256, which a TPM makes far faster than RSA), which takes the owner hierarchy's
    auth (``$PLINIUS_TPM_OWNER_AUTH`` where the machine's owner set one); ``persist``: make it
    persistent then (the platform's setup, once)."""
    t = pytss()
    c = t.constants
    try:
        handle = e.tr_from_tpmpublic(SRK_HANDLE)
    except t.TSS2_Exception as exc:
        if exc.rc & 0xFF != 0x8B:  # anything but "no such handle"
            raise
        handle = None
    if handle is not None:
        pub, _, _ = e.read_public(handle)
        a = c.TPMA_OBJECT
        need = a.FIXEDTPM | a.FIXEDPARENT | a.RESTRICTED | a.DECRYPT | a.SENSITIVEDATAORIGIN
        if (int(pub.publicArea.objectAttributes) & int(need)) != int(need):
            raise ConfigError(
                f"the key at {SRK_HANDLE:#x} is not a TPM-bound storage key: not using it as "
                "the storage root (whoever holds the owner hierarchy put it there)"
            )
        yield handle
        return
    e.tr_set_auth(c.ESYS_TR.OWNER, owner_auth())
    primary, *_ = e.create_primary(None, _srk_template(), c.ESYS_TR.OWNER)
    try:
        if persist:
            e.evict_control(c.ESYS_TR.OWNER, primary, SRK_HANDLE)
        yield primary
    finally:
        e.flush_context(primary)


def _hmac_template() -> Any:
    t = pytss()
    a = t.constants.TPMA_OBJECT
    attrs = a.FIXEDTPM | a.FIXEDPARENT | a.SENSITIVEDATAORIGIN | a.USERWITHAUTH | a.SIGN_ENCRYPT
    return t.types.TPM2B_PUBLIC.parse("hmac:sha256", objectAttributes=attrs | a.NODA)


def create_hmac_key(e: ESAPI) -> bytes:
    """A new keyed-hash key made inside the TPM: its TPM-wrapped blob (public || private),
    which loads only under this TPM's storage primary."""
    with _srk(e, persist=True) as srk:
        priv, pub, *_ = e.create(srk, None, _hmac_template())
    return bytes(pub.marshal()) + bytes(priv.marshal())


def check_hmac_blob(blob: bytes, what: str) -> tuple[Any, Any]:
    """The (public, private) of a key blob, refused unless it is a TPM-made, TPM-bound
    keyed-hash key (an attacker's key with known bits must never stand in for ours)."""
    t = pytss()
    a = t.constants.TPMA_OBJECT
    try:
        pub, used = t.types.TPM2B_PUBLIC.unmarshal(blob)
        priv, rest = t.types.TPM2B_PRIVATE.unmarshal(blob[used:])
    except Exception:
        raise ConfigError(f"{what} is not a TPM key blob") from None
    if used + rest != len(blob):
        raise ConfigError(f"{what} has trailing bytes: not a TPM key blob")
    area = pub.publicArea
    need = a.FIXEDTPM | a.FIXEDPARENT | a.SENSITIVEDATAORIGIN
    if area.type != t.constants.TPM2_ALG.KEYEDHASH or (int(area.objectAttributes) & need) != need:
        raise ConfigError(
            f"{what} is not a keyed-hash key made inside the TPM (fixedTPM, fixedParent, "
            "sensitiveDataOrigin): refusing a key whose bits may be known"
        )
    return pub, priv


def tpm_hmac(e: ESAPI, blob: bytes, labels: list[bytes], what: str) -> list[bytes]:
    """HMAC-SHA256 of each label with the key in ``blob``, computed inside the TPM."""
    t = pytss()
    pub, priv = check_hmac_blob(blob, what)
    with _srk(e) as srk:
        try:
            key = e.load(srk, priv, pub)
        except t.TSS2_Exception as exc:
            if exc.rc & 0xFFF == _RC_OBJECT_MEMORY:
                raise  # the TPM is full, not the blob foreign: TpmLink.run makes room
            raise ConfigError(
                f"{what} does not load on this TPM ({tpm_error(exc)}): it was made by another "
                "TPM (the platform directory was copied from another machine) or the owner "
                "hierarchy was cleared"
            ) from None
    try:
        return [bytes(e.hmac(key, label, t.constants.TPM2_ALG.SHA256)) for label in labels]
    finally:
        e.flush_context(key)


# --- the NV counter -------------------------------------------------------------------------


def _counter_attrs() -> int:
    t = pytss()
    nv = t.constants.TPMA_NV
    kind = t.constants.TPM2_NT.COUNTER << nv.TPM2_NT_SHIFT
    return int(kind | nv.AUTHWRITE | nv.AUTHREAD | nv.OWNERREAD | nv.NO_DA)


def open_counter(e: ESAPI, index: int) -> tuple[Any, CounterInfo] | None:
    """NV index ``index``'s ESAPI handle and public area (None: not defined)."""
    t = pytss()
    try:
        handle = e.tr_from_tpmpublic(index)
    except t.TSS2_Exception as exc:
        if exc.rc & 0xFF == 0x8B:  # TPM_RC_HANDLE: no such index
            return None
        raise
    pub, _ = e.nv_read_public(handle)
    attrs = int(pub.nvPublic.attributes)
    nv = t.constants.TPMA_NV
    kind = (attrs & int(nv.TPM2_NT_MASK)) >> int(nv.TPM2_NT_SHIFT)
    info = CounterInfo(
        is_counter=kind == int(t.constants.TPM2_NT.COUNTER),
        written=bool(attrs & int(nv.WRITTEN)),
        attributes=attrs,
    )
    return handle, info


def define_counter(e: ESAPI, index: int, owner_auth: bytes) -> None:
    """Define the NV counter (owner authorisation; the index's own auth is empty, no DA)."""
    t = pytss()
    e.tr_set_auth(t.constants.ESYS_TR.OWNER, owner_auth)
    area = t.types.TPMS_NV_PUBLIC(
        nvIndex=index,
        nameAlg=t.constants.TPM2_ALG.SHA256,
        attributes=t.constants.TPMA_NV(_counter_attrs()),
        dataSize=8,
    )
    e.nv_define_space(b"", t.types.TPM2B_NV_PUBLIC(area), t.constants.ESYS_TR.OWNER)


def counter_value(e: ESAPI, handle: Any) -> int:
    return int.from_bytes(bytes(e.nv_read(handle, 8, 0)), "big")


def counter_increment(e: ESAPI, handle: Any) -> None:
    e.nv_increment(handle)


# --- attestation ----------------------------------------------------------------------------


def _ek_session(e: ESAPI) -> Any:
    """The EK's policy (PolicySecret of the endorsement hierarchy): one session per use."""
    t = pytss()
    c = t.constants
    s = e.start_auth_session(
        c.ESYS_TR.NONE,
        c.ESYS_TR.NONE,
        c.TPM2_SE.POLICY,
        t.types.TPMT_SYM_DEF.parse("aes128cfb"),
        c.TPM2_ALG.SHA256,
    )
    e.policy_secret(c.ESYS_TR.ENDORSEMENT, s)
    return s


def _ek(e: ESAPI) -> Any:
    return e.tr_from_tpmpublic(EK_HANDLE)


def ek_certificate(e: ESAPI) -> tuple[bytes, bytes]:
    """(the EK's certificate, DER; the EK's public area, marshalled)."""
    t = pytss()
    handle = e.tr_from_tpmpublic(EK_CERT_INDEX)
    pub, _ = e.nv_read_public(handle)
    size = int(pub.nvPublic.dataSize)
    _, cap = e.get_capability(
        t.constants.TPM2_CAP.TPM_PROPERTIES, t.constants.TPM2_PT_NV.BUFFER_MAX
    )
    chunk = int(cap.data.tpmProperties.tpmProperty[0].value)
    der = b""
    while len(der) < size:
        der += bytes(e.nv_read(handle, min(chunk, size - len(der)), len(der)))
    ek_pub, _, _ = e.read_public(_ek(e))
    return der, bytes(ek_pub.marshal())


def create_ak(e: ESAPI) -> bytes:
    """A restricted ECC P-256 signing key under the EK: its blob (public || private)."""
    t = pytss()
    a = t.constants.TPMA_OBJECT
    attrs = (
        a.RESTRICTED
        | a.SIGN_ENCRYPT
        | a.FIXEDTPM
        | a.FIXEDPARENT
        | a.SENSITIVEDATAORIGIN
        | a.USERWITHAUTH
    )
    tmpl = t.types.TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)
    s = _ek_session(e)
    try:
        priv, pub, *_ = e.create(_ek(e), None, tmpl, session1=s)
    finally:
        e.flush_context(s)
    return bytes(pub.marshal()) + bytes(priv.marshal())


@contextlib.contextmanager
def _loaded_ak(e: ESAPI, blob: bytes) -> Iterator[Any]:
    t = pytss()
    pub, used = t.types.TPM2B_PUBLIC.unmarshal(blob)
    priv, _ = t.types.TPM2B_PRIVATE.unmarshal(blob[used:])
    s = _ek_session(e)
    try:
        ak = e.load(_ek(e), priv, pub, session1=s)
    finally:
        e.flush_context(s)
    try:
        yield ak
    finally:
        e.flush_context(ak)


def pcr_event(measurement: bytes) -> bytes:
    """What a quote extends into :data:`QUOTE_PCR` for an enclave measurement."""
    return hashlib.sha256(b"plinius-enclave-measurement" + measurement).digest()


def quote(e: ESAPI, ak_blob: bytes, measurement: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """Reset :data:`QUOTE_PCR`, extend the measurement's event into it and quote it with the
    AK over ``nonce``: (TPMS_ATTEST, TPMT_SIGNATURE), both marshalled."""
    t = pytss()
    c = t.constants
    pcr = c.ESYS_TR.parse(f"pcr{QUOTE_PCR}")
    e.pcr_reset(pcr)
    digest = t.types.TPMT_HA(
        hashAlg=c.TPM2_ALG.SHA256, digest=t.types.TPMU_HA(sha256=pcr_event(measurement))
    )
    e.pcr_extend(pcr, t.types.TPML_DIGEST_VALUES([digest]))
    with _loaded_ak(e, ak_blob) as ak:
        attest, sig = e.quote(
            ak, f"sha256:{QUOTE_PCR}", nonce, t.types.TPMT_SIG_SCHEME(scheme=c.TPM2_ALG.NULL)
        )
    return bytes(attest), bytes(sig.marshal())


def activate_credential(e: ESAPI, ak_blob: bytes, id_object: bytes, secret: bytes) -> bytes:
    """TPM2_ActivateCredential: the EK opens a challenge made for the AK's name, which proves
    the AK lives in the TPM the EK certificate names."""
    t = pytss()
    ido, _ = t.types.TPM2B_ID_OBJECT.unmarshal(id_object)
    enc, _ = t.types.TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
    with _loaded_ak(e, ak_blob) as ak:
        s = _ek_session(e)
        try:
            got = e.activate_credential(
                ak, _ek(e), ido, enc, session1=t.constants.ESYS_TR.PASSWORD, session2=s
            )
        finally:
            e.flush_context(s)
    return bytes(got)
