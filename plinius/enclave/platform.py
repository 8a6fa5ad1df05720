"""The simulated SGX platform: the CPU's fused root secret, quoting key and monotonic counters.

On real hardware the root secret is fused into the CPU and never leaves it, and monotonic
counters live in tamper-resistant platform storage. Here both live in the **platform
location** (``$PLINIUS_PLATFORM_DIR``, default ``$XDG_DATA_HOME/plinius-platform``), created
0700 with files 0600. It stands in for the CPU's fuses and monotonic counters: the threat model
assumes the attacker does not control it. Whoever does control it *is* the simulated CPU and can
do everything: derive every sealing key, unseal the data key, decrypt every mirror and forge
counters. It is therefore never the state directory (``$PLINIUS_STATE_DIR``: sealed keys, the
sealed data set cache, which the attacker may own) and never a backend.

Everything an enclave seals is derived from the secret with HKDF and the enclave's measurement,
so another enclave (a changed binary or model configuration) cannot unseal it. The quoting key
signs quotes; its public half is what an owner trusts (the stand-in for Intel's attestation
service).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from plinius.core.errors import ConfigError, NotFoundError
from plinius.core.fsutil import create_whole, private_dir, read_regular
from plinius.enclave.attestation import QuoteVerifier, make_quote, pinned_key_verifier
from plinius.enclave.platform_protocol import (
    Platform,
    _nested,
    default_platform_dir,
    default_state_dir,
)
from plinius.enclave.slot_files import SlotFiles
from plinius.enclave.slot_state import SlotRecords

FUSE_BYTES = 32


#: ``--platform`` / ``$PLINIUS_PLATFORM`` kinds this build knows
PLATFORM_KINDS = ("sim", "tpm")
PLATFORM_ENV = "PLINIUS_PLATFORM"


def open_platform(
    spec: str | None = None,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    create: bool = True,
) -> Platform:
    """The platform a spec names: ``sim`` (the simulated CPU at ``$PLINIUS_PLATFORM_DIR``),
    ``sim:DIR``, or ``tpm:device=/dev/tpmrm0`` / ``tpm:swtpm=HOST:PORT`` (a TPM 2.0, see
    :mod:`plinius.enclave.tpm_platform`); default ``$PLINIUS_PLATFORM``, else ``sim``."""
    spec = spec or os.environ.get(PLATFORM_ENV) or "sim"
    kind, _, where = spec.partition(":")
    if kind == "tpm":
        from plinius.enclave.tpm_platform import TpmPlatform

        return TpmPlatform(spec, state_dir=state_dir, create=create)
    if kind != "sim":
        raise ConfigError(
            f"platform {spec!r}: unknown kind {kind!r}; this build knows "
            f"{', '.join(PLATFORM_KINDS)} (sim or sim:DIR, the simulated CPU; "
            "tpm:device=/dev/tpmrm0 or tpm:swtpm=HOST:PORT, a TPM 2.0)"
        )
    return SimulatedPlatform(where or None, state_dir=state_dir, create=create)


class SimulatedPlatform:
    """One machine's simulated SGX platform.

    ``dir`` is the platform location (trusted: fuses, quoting key, counters); ``state_dir`` is
    where untrusted sealed state goes (sealed keys, the data set cache).
    """

    def __init__(
        self,
        platform_dir: str | os.PathLike[str] | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        create: bool = True,
    ) -> None:
        """``create=False`` for read-only commands: nothing is created; a missing platform
        location is an error (nothing was ever committed on this simulated CPU)."""
        plat = Path(platform_dir) if platform_dir is not None else default_platform_dir()
        state = Path(state_dir) if state_dir is not None else default_state_dir()
        if _nested(plat, state):
            raise ConfigError(
                f"the platform location {plat} and the state directory {state} overlap: the "
                "platform location stands in for the CPU and must be apart from all storage "
                "(set PLINIUS_PLATFORM_DIR and PLINIUS_STATE_DIR to separate directories)"
            )
        if not create and not plat.exists():
            raise NotFoundError(
                f"no platform location at {plat}: this simulated CPU never committed a mirror "
                "(give the trainer's with --platform sim:DIR or set PLINIUS_PLATFORM_DIR)"
            )
        self.dir = private_dir(plat, "platform location", create=create)
        self.state_dir = private_dir(state, "state directory") if create else state
        self._derived: dict[tuple[bytes, bytes, int], bytes] = {}
        self._fuse = self._load_or_create(self.dir / "fuse.key", lambda: os.urandom(FUSE_BYTES))
        if len(self._fuse) != FUSE_BYTES:
            raise ConfigError(
                f"{self.dir / 'fuse.key'} is {len(self._fuse)} B, not {FUSE_BYTES}: the "
                "platform location is damaged (it stands in for the CPU: restore or reset it)"
            )
        pem = self._load_or_create(
            self.dir / "quoting.pem",
            lambda: ECC.generate(curve="ed25519").export_key(format="PEM").encode(),
        )
        try:
            self._quoting = ECC.import_key(pem)
        except (ValueError, IndexError, TypeError):
            raise ConfigError(
                f"{self.dir / 'quoting.pem'} is not a quoting key: the platform location is damaged"
            ) from None

    @staticmethod
    def _load_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
        """The platform file ``path``, created with ``make()`` when there is none.

        It appears under its name only whole (:func:`plinius.core.fsutil.create_whole`); another
        process that created it first wins: its file is used."""
        what = "platform file"
        try:
            return read_regular(path, what, nofollow=True, max_bytes=1 << 16)
        except NotFoundError:
            return create_whole(path, make(), what, max_bytes=1 << 16)

    kind = "simulated"

    def derive(self, purpose: bytes, measurement: bytes, length: int = 16) -> bytes:
        """A key only code with this ``measurement`` obtains (SGX EGETKEY, MRENCLAVE policy)."""
        memo = (purpose, measurement, length)
        key = self._derived.get(memo)
        if key is None:  # derived once per purpose: every mirror commit seals counter state
            key = HKDF(self._fuse, length, salt=measurement, hashmod=SHA256, context=purpose)
            assert isinstance(key, bytes)
            self._derived[memo] = key
        return key

    def sign_quote(self, body: bytes) -> bytes:
        """Ed25519 over the quote body with the platform's quoting key."""
        return bytes(eddsa.new(self._quoting, "rfc8032").sign(body))

    def attest(self, measurement: bytes, report_data: bytes) -> bytes:
        """A quote signed with the simulated quoting key."""
        return make_quote(self, measurement, report_data).to_bytes()

    def owner_verifier(self) -> QuoteVerifier:
        """Checks quotes against this simulated CPU's quoting key (the owner trusts it: the
        simulated platform is trusted as a whole)."""
        return pinned_key_verifier(self.quoting_public_pem)

    def slot_records(self, *, create: bool = True) -> SlotRecords:
        """Sealed files under the platform location, one per slot."""
        return SlotFiles(self, create=create)

    def describe(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "location": str(self.dir),
            "note": "simulated CPU: root secret, quoting key and freshness records in files "
            "(no SGX or TPM on this machine)",
        }

    @property
    def quoting_public_pem(self) -> str:
        """What an owner pins to verify quotes from this platform."""
        return str(self._quoting.public_key().export_key(format="PEM"))
