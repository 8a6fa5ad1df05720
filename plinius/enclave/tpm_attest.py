"""The owner's check of a TPM platform's quote, before the data key is released.

1. The EK certificate chains to the owner's trust root (the TPM vendor's or cloud's EK CA;
   swtpm_setup's local CA in tests), and the EK public area the host sent holds that key.
2. The attestation key is a restricted, fixedTPM signing key, and it lives in that TPM: the
   owner makes a credential for the AK's name encrypted to the EK, and only that TPM can
   activate it (TPM2_ActivateCredential) with that AK loaded.
3. The quote is signed by the AK, is TPM-generated, carries the nonce of this quote's body
   (measurement and report data) and the PCR 23 digest that extending the expected
   measurement from zeros gives.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any

from plinius.enclave.attestation import AttestationError, quote_body, report_data_for
from plinius.enclave.tpm_link import QUOTE_PCR, pcr_event, pytss

#: the largest quote document accepted (an EK certificate is ~1 KiB)
MAX_QUOTE = 1 << 16
_FIELDS = ("measurement", "report_data", "ek_cert", "ek_public", "ak", "attest", "signature")


def _certs(pem: bytes, where: str) -> list[Any]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise AttestationError(f"EK trust root {where} holds no PEM certificate") from None
    return certs


def _is_ca(cert: Any) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _chain_to_root(cert: Any, bundle: list[Any], where: str) -> None:
    """``cert`` issued by a CA certificate of ``bundle`` (valid now), and so on up to a
    self-signed one of the bundle."""
    import datetime

    from cryptography.exceptions import InvalidSignature

    now = datetime.datetime.now(datetime.UTC)
    seen = 0
    while seen <= len(bundle):
        for issuer in bundle:
            if not _is_ca(issuer):
                continue
            if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
                continue
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if issuer.subject == issuer.issuer:
                return
            cert = issuer
            break
        else:
            raise AttestationError(
                "the TPM's EK certificate does not chain to the trust root "
                f"{where}: not a TPM this owner trusts (or the wrong CA bundle)"
            )
        seen += 1
    raise AttestationError(f"the EK certificate chain in {where} does not end in a root")


class TpmVerifier:
    """A :data:`~plinius.enclave.attestation.QuoteVerifier` for TPM quotes."""

    def __init__(
        self, trust_root_pem: bytes, where: str, activate: Callable[[bytes, bytes], bytes]
    ) -> None:
        self.bundle = _certs(trust_root_pem, where)
        self.where = where
        self.activate = activate

    def __call__(self, quote: bytes, expected_measurement: bytes, enclave_public: bytes) -> None:
        t = pytss()
        c = t.constants
        doc = self._parse(quote)
        if not hmac.compare_digest(doc["measurement"], expected_measurement):
            raise AttestationError(
                f"enclave measurement {doc['measurement'].hex()} is not the expected "
                f"{expected_measurement.hex()}: different trusted code or model configuration"
            )
        if not hmac.compare_digest(doc["report_data"], report_data_for(enclave_public)):
            raise AttestationError("quote does not bind the enclave's channel key (report data)")
        ek_public = self._ek(doc)
        try:
            ak_pub, _ = t.types.TPM2B_PUBLIC.unmarshal(doc["ak"])
        except Exception:
            raise AttestationError("the quote's attestation key is not a TPM public area") from None
        a = c.TPMA_OBJECT
        need = a.RESTRICTED | a.SIGN_ENCRYPT | a.FIXEDTPM | a.FIXEDPARENT | a.SENSITIVEDATAORIGIN
        if (int(ak_pub.publicArea.objectAttributes) & int(need)) != int(need):
            raise AttestationError(
                "the quote's attestation key is not a restricted, TPM-bound signing key"
            )
        secret = secrets.token_bytes(32)
        from tpm2_pytss.utils import make_credential

        id_object, enc = make_credential(ek_public, secret, ak_pub.get_name())
        try:
            got = self.activate(bytes(id_object.marshal()), bytes(enc.marshal()))
        except Exception as exc:
            raise AttestationError(
                "the TPM could not activate the owner's credential for the attestation key: "
                f"the key is not in the TPM the EK certificate names ({exc})"
            ) from None
        if not hmac.compare_digest(got, secret):
            raise AttestationError("credential activation returned another secret: AK not proven")
        try:
            sig, _ = t.types.TPMT_SIGNATURE.unmarshal(doc["signature"])
            sig.verify_signature(ak_pub, doc["attest"])
        except Exception:
            raise AttestationError(
                "TPM quote signature does not verify with the attestation key: altered quote"
            ) from None
        self._check_attest(doc, expected_measurement)

    def _parse(self, quote: bytes) -> dict[str, bytes]:
        if len(quote) > MAX_QUOTE:
            raise AttestationError(f"TPM quote is {len(quote)} B, more than {MAX_QUOTE} B")
        try:
            raw = json.loads(quote)
            if raw.get("format") != "plinius-tpm-quote-v1":
                raise ValueError("not a plinius TPM quote")
            return {k: bytes.fromhex(raw[k]) for k in _FIELDS}
        except RecursionError:
            raise AttestationError("malformed TPM quote: nested too deeply") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AttestationError(
                f"malformed TPM quote ({exc}): the platform is not a TPM platform, or altered"
            ) from None

    def _ek(self, doc: dict[str, bytes]) -> Any:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import rsa

        t = pytss()
        try:
            cert = x509.load_der_x509_certificate(doc["ek_cert"])
            ek_public, _ = t.types.TPM2B_PUBLIC.unmarshal(doc["ek_public"])
        except Exception:
            raise AttestationError("the quote's EK certificate or EK is malformed") from None
        _chain_to_root(cert, self.bundle, self.where)
        key = cert.public_key()
        area = ek_public.publicArea
        if not isinstance(key, rsa.RSAPublicKey) or area.type != t.constants.TPM2_ALG.RSA:
            raise AttestationError("only RSA EKs are supported (the TCG EK profile's default)")
        if int.from_bytes(bytes(area.unique.rsa), "big") != key.public_numbers().n:
            raise AttestationError("the EK the host sent is not the one its certificate names")
        return ek_public

    def _check_attest(self, doc: dict[str, bytes], expected_measurement: bytes) -> None:
        t = pytss()
        c = t.constants
        try:
            att, _ = t.types.TPMS_ATTEST.unmarshal(doc["attest"])
        except Exception:
            raise AttestationError("the TPM quote is not a TPMS_ATTEST") from None
        if att.magic != c.TPM2_GENERATED.VALUE or att.type != c.TPM2_ST.ATTEST_QUOTE:
            raise AttestationError("not a TPM-generated quote")
        nonce = hashlib.sha256(quote_body(doc["measurement"], doc["report_data"])).digest()
        if not hmac.compare_digest(bytes(att.extraData), nonce):
            raise AttestationError("the TPM quote is for another measurement or channel key")
        sel = att.attested.quote.pcrSelect
        picked = []
        for i in range(sel.count):
            s = sel.pcrSelections[i]
            bits = bytes(s.pcrSelect)[: s.sizeofSelect]
            picked += [
                (int(s.hash), b * 8 + k)
                for b in range(len(bits))
                for k in range(8)
                if bits[b] >> k & 1
            ]
        if picked != [(int(c.TPM2_ALG.SHA256), QUOTE_PCR)]:
            raise AttestationError(f"the TPM quote does not cover exactly sha256 PCR {QUOTE_PCR}")
        pcr = hashlib.sha256(bytes(32) + pcr_event(expected_measurement)).digest()
        if not hmac.compare_digest(
            bytes(att.attested.quote.pcrDigest), hashlib.sha256(pcr).digest()
        ):
            raise AttestationError(
                f"PCR {QUOTE_PCR} does not hold the expected enclave measurement"
            )
