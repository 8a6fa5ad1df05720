"""The platform protocol: what a machine's root of trust gives the enclave and the host, and
where a platform and the untrusted state live by default. Implementations:
:class:`plinius.enclave.platform.SimulatedPlatform` and
:class:`plinius.enclave.tpm_platform.TpmPlatform`; :func:`plinius.enclave.platform.open_platform`
picks one by spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from plinius.enclave.attestation import QuoteVerifier
from plinius.enclave.slot_state import SlotRecords


def _xdg(var: str, fallback: str) -> Path:
    env = os.environ.get(var)
    return Path(env) if env else Path.home() / fallback


def default_state_dir() -> Path:
    """``$PLINIUS_STATE_DIR``, else ``$XDG_STATE_HOME/plinius``: untrusted, attacker-owned."""
    env = os.environ.get("PLINIUS_STATE_DIR")
    return Path(env) if env else _xdg("XDG_STATE_HOME", ".local/state") / "plinius"


def default_platform_dir() -> Path:
    """``$PLINIUS_PLATFORM_DIR``, else ``$XDG_DATA_HOME/plinius-platform``: the simulated CPU."""
    env = os.environ.get("PLINIUS_PLATFORM_DIR")
    return Path(env) if env else _xdg("XDG_DATA_HOME", ".local/share") / "plinius-platform"


def _nested(a: Path, b: Path) -> bool:
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb + os.sep) or rb.startswith(ra + os.sep)


class Platform(Protocol):
    """What the machine's root of trust gives the enclave and the host: keys bound to an
    enclave's measurement, quotes, and a store for the freshness records.

    Two implementations: the simulated CPU (:class:`SimulatedPlatform`, everything in a trusted
    directory) and a TPM 2.0 (:class:`plinius.enclave.tpm_platform.TpmPlatform`, keys and the
    freshness anchor inside the TPM, its directory attacker-held). Only the enclave package
    touches a platform's own files.
    """

    #: what reports call it: ``"simulated"`` or ``"tpm"``
    kind: str
    #: the platform's directory (trusted on the simulation; TPM-protected blobs on a TPM)
    dir: Path
    #: where untrusted sealed state goes (sealed keys, the data set cache)
    state_dir: Path

    def derive(self, purpose: bytes, measurement: bytes, length: int = 16) -> bytes:
        """The key for ``purpose`` and ``measurement`` (SGX EGETKEY with the MRENCLAVE policy
        stands behind this on real hardware: only that enclave obtains it; here the enclave is
        a software boundary, and on a TPM anyone who can use the TPM obtains it too)."""
        ...

    def attest(self, measurement: bytes, report_data: bytes) -> bytes:
        """A quote: the platform vouches that an enclave with ``measurement`` holds
        ``report_data`` (the hash of its channel key)."""
        ...

    def owner_verifier(self) -> QuoteVerifier:
        """The owner's check of this platform's quotes, from the trust root the owner pins."""
        ...

    def slot_records(self, *, create: bool = True) -> SlotRecords:
        """Where the freshness records of mirror slots live on this platform."""
        ...

    def describe(self) -> dict[str, str]:
        """What ran, for reports: the kind, where it lives, and that it is (not) hardware."""
        ...
