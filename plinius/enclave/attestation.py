"""Quotes: the enclave's measurement and 64 bytes of report data, signed by the platform.

The report data carries the hash of the enclave's ephemeral ECDH public key, so a verified quote
binds the key to the measurement the platform vouched for. What that is worth is the
platform's: on SGX hardware only that enclave could ask; here the enclave is a software
boundary, and on a TPM any process that can use the TPM can have PCR 23 quoted for any value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from plinius.core.errors import PliniusError


class _Signs(Protocol):
    def sign_quote(self, body: bytes) -> bytes: ...


class AttestationError(PliniusError):
    """A quote failed verification: wrong signature, measurement or report data."""


#: the owner's check of a platform's quote: (quote bytes, expected measurement, the enclave's
#: channel public key); raises :class:`AttestationError` naming what failed
QuoteVerifier = Callable[[bytes, bytes, bytes], None]


def quote_body(measurement: bytes, report_data: bytes) -> bytes:
    """What a quote vouches for: the measurement and the report data, domain-separated."""
    return b"plinius-quote-v1" + measurement + report_data


@dataclass(frozen=True)
class Quote:
    measurement: bytes
    report_data: bytes
    signature: bytes

    def body(self) -> bytes:
        return quote_body(self.measurement, self.report_data)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {k: getattr(self, k).hex() for k in ("measurement", "report_data", "signature")}
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Quote:
        if len(raw) > 1 << 16:
            raise AttestationError(f"quote is {len(raw)} B, more than 65536 B")
        try:
            d = json.loads(raw)
            return cls(*(bytes.fromhex(d[k]) for k in ("measurement", "report_data", "signature")))
        except RecursionError:
            raise AttestationError("malformed quote: nested too deeply") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise AttestationError(f"malformed quote: {exc}") from None


def make_quote(platform: _Signs, measurement: bytes, report_data: bytes) -> Quote:
    """What the quoting enclave does: sign (measurement, report data) with the platform key."""
    if len(report_data) != 64:
        raise ValueError("report data is 64 bytes")
    unsigned = Quote(measurement, report_data, b"")
    sig = platform.sign_quote(unsigned.body())
    return Quote(measurement, report_data, sig)


def report_data_for(public_key: bytes) -> bytes:
    return hashlib.sha512(b"plinius-ecdh-key" + public_key).digest()


def verify_quote(
    quote: Quote, quoting_public_pem: str, expected_measurement: bytes, enclave_public_key: bytes
) -> None:
    """The owner's checks; raise :class:`AttestationError` with the reason on any mismatch."""
    try:
        verifier = eddsa.new(ECC.import_key(quoting_public_pem), "rfc8032")
        verifier.verify(quote.body(), quote.signature)
    except ValueError:
        raise AttestationError(
            "quote signature does not verify against the pinned platform key: "
            "not a genuine (simulated) SGX platform, or the quote was altered"
        ) from None
    if not hmac.compare_digest(quote.measurement, expected_measurement):
        raise AttestationError(
            f"enclave measurement {quote.measurement.hex()} is not the expected "
            f"{expected_measurement.hex()}: different trusted code or model configuration"
        )
    if not hmac.compare_digest(quote.report_data, report_data_for(enclave_public_key)):
        raise AttestationError("quote does not bind the enclave's channel key (report data)")


def pinned_key_verifier(quoting_public_pem: str) -> QuoteVerifier:
    """The simulated platform's quotes, checked against its pinned quoting key."""

    def check(quote: bytes, expected_measurement: bytes, enclave_public_key: bytes) -> None:
        verify_quote(
            Quote.from_bytes(quote), quoting_public_pem, expected_measurement, enclave_public_key
        )

    return check
