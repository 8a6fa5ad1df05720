"""The ``tpm`` platform: a TPM 2.0 as the root of trust for keys, freshness and attestation.

What the simulated CPU keeps in trusted files the TPM keeps inside itself: the root secret is a
keyed-hash object made in the TPM (fixedTPM, fixedParent), and every key is an HMAC the TPM
computes; freshness is anchored in one NV counter (:mod:`plinius.enclave.counter_table`); quotes
are TPM2_Quotes by an attestation key the EK certificate vouches for
(:mod:`plinius.enclave.tpm_attest`). The platform directory keeps only TPM-wrapped blobs and the
counter-bound table: it may be the attacker's. Copying it to another TPM gives nothing (the
blobs load nowhere else); rolling it back or deleting it is refused.

Spec: ``tpm:device=/dev/tpmrm0`` or ``tpm:swtpm=HOST:PORT`` (swtpm's control channel on
PORT+1), with options ``,dir=PATH`` (default ``$PLINIUS_PLATFORM_DIR``), ``,ca=PATH`` (the EK
certificate trust root: the TPM vendor's or cloud's CA bundle, PEM), ``,nv=0x...`` (the NV
counter index) and ``,counter_every=N`` or ``,counter_every=Ns``. The owner hierarchy's
authorisation, needed once to define the counter, comes from ``$PLINIUS_TPM_OWNER_AUTH``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from plinius.core.errors import ConfigError, NotFoundError
from plinius.core.fsutil import create_whole, private_dir, read_regular
from plinius.enclave import tpm_link
from plinius.enclave.counter_table import CounterEvery, CounterTable
from plinius.enclave.platform_protocol import default_platform_dir, default_state_dir
from plinius.enclave.slot_state import SlotRecords

#: the owner-range NV index of the counter unless ``nv=`` names another
DEFAULT_NV_INDEX = 0x013F504C
CA_ENV = "PLINIUS_TPM_CA"
KEY_FILE = "hmac-key.tpm"
_OPTIONS = ("device", "swtpm", "dir", "ca", "nv", "counter_every")
_HOSTPORT = re.compile(r"^([A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:]{2,45}\]):(\d{1,5})$")


def parse_tpm_spec(spec: str) -> dict[str, str]:
    """``tpm:key=value,...`` as a dict; one line naming what is wrong otherwise."""
    _, _, rest = spec.partition(":")
    opts: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in _OPTIONS or not value:
            known = ", ".join(o + "=..." for o in _OPTIONS)
            raise ConfigError(f"platform {spec!r}: {part!r} is not one of {known}")
        if key in opts:
            raise ConfigError(f"platform {spec!r}: {key}= given twice")
        opts[key] = value
    if ("device" in opts) == ("swtpm" in opts):
        raise ConfigError(
            f"platform {spec!r}: name the TPM with device=/dev/tpmrm0 or swtpm=HOST:PORT (one)"
        )
    return opts


def _tcti(opts: dict[str, str], spec: str) -> tuple[str, str]:
    if "device" in opts:
        dev = opts["device"]
        if not dev.startswith("/"):
            raise ConfigError(f"platform {spec!r}: device= takes an absolute path")
        return f"device:{dev}", f"device {dev}"
    m = _HOSTPORT.match(opts["swtpm"])
    if not m or not 0 < int(m.group(2)) < 65535:
        raise ConfigError(f"platform {spec!r}: swtpm= takes HOST:PORT (control on PORT+1)")
    host = m.group(1).strip("[]")
    if not _loopback(host):
        raise ConfigError(
            f"platform {spec!r}: swtpm= must be on this machine (127.0.0.1, ::1, localhost): "
            "TPM commands and answers, derived keys among them, cross the socket in clear"
        )
    return f"swtpm:host={host},port={m.group(2)}", f"swtpm {m.group(1)}:{m.group(2)} (software TPM)"


def _tpm_id(opts: dict[str, str]) -> str:
    """One name per TPM however the spec spells it: swtpm by its port (always loopback), a
    device by its number (``/dev/tpm0`` and ``/dev/tpmrm0`` are one TPM)."""
    if "swtpm" in opts:
        return f"swtpm:{opts['swtpm'].rsplit(':', 1)[1]}"
    m = re.match(r"^/dev/tpm(?:rm)?(\d+)$", opts["device"])
    return f"tpm{m.group(1)}" if m else f"device:{os.path.realpath(opts['device'])}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TpmPlatform:
    """One machine's TPM 2.0 as its platform (see the module docstring)."""

    kind = "tpm"

    def __init__(
        self,
        spec: str,
        *,
        platform_dir: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        create: bool = True,
    ) -> None:
        opts = parse_tpm_spec(spec)
        self.spec = spec
        self.tcti, self.where = _tcti(opts, spec)
        self.tpm_id = _tpm_id(opts)
        self.link = tpm_link.TpmLink(self.tcti, self.where)
        plat = Path(opts.get("dir") or platform_dir or default_platform_dir())
        state = Path(state_dir) if state_dir is not None else default_state_dir()
        if not create and not plat.exists():
            raise NotFoundError(
                f"no platform directory at {plat}: this TPM platform never committed a mirror "
                "there (give the trainer's with dir= or $PLINIUS_PLATFORM_DIR)"
            )
        self.dir = private_dir(plat, "platform directory", create=create)
        self.state_dir = private_dir(state, "state directory") if create else state
        try:
            self.nv_index = int(opts.get("nv", hex(DEFAULT_NV_INDEX)), 16)
        except ValueError:
            raise ConfigError(f"platform {spec!r}: nv= takes a hex NV index") from None
        if not 0x01000000 <= self.nv_index <= 0x013FFFFF:
            raise ConfigError(
                f"platform {spec!r}: nv={self.nv_index:#x} is not in the owner NV range "
                "0x01000000-0x013fffff"
            )
        every = opts.get("counter_every")
        self.counter_every = CounterEvery.parse(every, spec) if every else CounterEvery()
        ca = opts.get("ca") or os.environ.get(CA_ENV)
        self.ca_path = Path(ca) if ca else None
        self._derived: dict[tuple[bytes, bytes, int], bytes] = {}
        self._lock = threading.Lock()
        self._ak: bytes | None = None
        self._key_blob = self._load_key(create)

    # --- keys ----------------------------------------------------------------------------

    def _load_key(self, create: bool) -> bytes:
        """The keyed-hash key's blob, made in the TPM on first use. A missing key file where
        the platform was set up (its table or counter exists) is refused: the freshness
        records would be lost with it."""
        path = self.dir / KEY_FILE
        what = f"TPM key blob {path}"
        try:
            blob = read_regular(path, what, nofollow=True, max_bytes=1 << 12)
        except NotFoundError:
            blob = None
        if blob is not None:
            tpm_link.check_hmac_blob(blob, what)
            return blob
        with self.link.session() as e:
            defined = tpm_link.open_counter(e, self.nv_index) is not None
        if (self.dir / CounterTable.FILE).exists() or defined:
            raise ConfigError(
                f"{what} is missing but this platform was set up (its freshness table or NV "
                f"counter {self.nv_index:#x} exists): the platform directory was emptied or "
                "replaced; refusing to start over (restore the directory; a new platform "
                "needs another dir= and nv=)"
            )
        if not create:
            raise NotFoundError(f"no {what}: this TPM platform was never set up here")
        return create_whole(path, self.link.run(tpm_link.create_hmac_key), what, max_bytes=1 << 12)

    def derive(self, purpose: bytes, measurement: bytes, length: int = 16) -> bytes:
        """HMAC-SHA256, inside the TPM, of (purpose, measurement, length): the key never
        leaves the TPM, so only this TPM derives these keys. Memoised per process."""
        memo = (purpose, measurement, length)
        with self._lock:
            key = self._derived.get(memo)
            if key is None:
                label = b"plinius-derive-v1" + bytes([len(purpose)]) + purpose + measurement
                label += length.to_bytes(2, "big")
                what = str(self.dir / KEY_FILE)
                (mac,) = self.link.run(
                    lambda e: tpm_link.tpm_hmac(e, self._key_blob, [label], what)
                )
                if length <= len(mac):
                    key = mac[:length]
                else:
                    out = HKDF(mac, length, salt=b"", hashmod=SHA256, context=b"plinius-expand")
                    assert isinstance(out, bytes)
                    key = out
                self._derived[memo] = key
            return key

    # --- freshness -----------------------------------------------------------------------

    def slot_records(self, *, create: bool = True) -> SlotRecords:
        return CounterTable(self, create=create)

    # --- attestation ---------------------------------------------------------------------

    def attest(self, measurement: bytes, report_data: bytes) -> bytes:
        """A TPM2_Quote over PCR 23 holding the measurement, with the EK certificate and the
        AK the owner's challenge (:meth:`activate_credential`) ties to that EK."""
        from plinius.enclave.attestation import quote_body

        nonce = hashlib.sha256(quote_body(measurement, report_data)).digest()
        if self._ak is None:
            self._ak = self.link.run(tpm_link.create_ak)
        ak = self._ak
        ek_cert, ek_public = self.link.run(tpm_link.ek_certificate)
        attest, signature = self.link.run(lambda e: tpm_link.quote(e, ak, measurement, nonce))
        doc = {
            "format": "plinius-tpm-quote-v1",
            "measurement": measurement.hex(),
            "report_data": report_data.hex(),
            "ek_cert": ek_cert.hex(),
            "ek_public": ek_public.hex(),
            "ak": self._ak.hex(),
            "attest": attest.hex(),
            "signature": signature.hex(),
        }
        return json.dumps(doc).encode()

    def activate_credential(self, id_object: bytes, secret: bytes) -> bytes:
        """The TPM's answer to the owner's credential challenge for the quoting AK."""
        if self._ak is None:
            raise ConfigError("no quote was made on this platform yet: nothing to activate")
        ak = self._ak
        return self.link.run(lambda e: tpm_link.activate_credential(e, ak, id_object, secret))

    def owner_verifier(self) -> Any:
        """The owner's check of this platform's quotes: EK certificate to the trust root
        (``ca=``), the AK by credential activation, then the quote."""
        from plinius.enclave.tpm_attest import TpmVerifier

        if self.ca_path is None:
            raise ConfigError(
                f"platform {self.spec!r}: no trust root for the TPM's EK certificate: give "
                f"ca=PATH (your TPM vendor's or cloud's EK CA bundle, PEM) or ${CA_ENV}"
            )
        pem = read_regular(self.ca_path, "EK trust root", max_bytes=1 << 20)
        return TpmVerifier(pem, str(self.ca_path), self.activate_credential)

    def describe(self) -> dict[str, str]:
        soft = "swtpm" in self.where
        return {
            "kind": self.kind,
            "location": str(self.dir),
            "tpm": self.where,
            "counter_every": self.counter_every.describe(),
            "note": (
                "software TPM (swtpm): a real TPM 2.0 command set, no hardware isolation"
                if soft
                else "TPM 2.0 device"
            )
            + "; keys in the TPM, freshness bound to NV counter "
            f"{self.nv_index:#x}; the enclave is a software boundary (no SGX here)",
        }
