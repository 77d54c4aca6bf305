"""Who may sign a DCC: the signer certificates (DSCs) a verifier trusts.

A DCC names its signer only by `kid`, the first 8 bytes of the SHA-256 of
the DSC in DER. Eight bytes can collide, so a kid maps to a list of
certificates and the verifier tries each. The DSC's extended key usage may
restrict which certificate types (test, vaccination, recovery) it may sign.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

EKU_TEST = "1.3.6.1.4.1.1847.2021.1.1"
EKU_VACCINATION = "1.3.6.1.4.1.1847.2021.1.2"
EKU_RECOVERY = "1.3.6.1.4.1.1847.2021.1.3"
# Early DSCs used these, with an extra ".0" arc; verifiers accept both.
EKU_TEST_ALT = "1.3.6.1.4.1.0.1847.2021.1.1"
EKU_VACCINATION_ALT = "1.3.6.1.4.1.0.1847.2021.1.2"
EKU_RECOVERY_ALT = "1.3.6.1.4.1.0.1847.2021.1.3"

# Certificate type (the DCC's group key) -> the EKU OIDs that allow signing it.
EKU_BY_TYPE: dict[str, frozenset[str]] = {
    "t": frozenset({EKU_TEST, EKU_TEST_ALT}),
    "v": frozenset({EKU_VACCINATION, EKU_VACCINATION_ALT}),
    "r": frozenset({EKU_RECOVERY, EKU_RECOVERY_ALT}),
}
DCC_EKUS = frozenset().union(*EKU_BY_TYPE.values())


def kid_of(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()[:8]


def uvci_hash(uvci: str) -> str:
    """The revocation-list entry of a UVCI (hash type UCI of the EU gateway).

    The hash is over the `ci` value exactly as it stands in the certificate,
    "URN:UVCI:" prefix included (the DCC revocation spec and the reference
    wallets hash the unique certificate identifier unchanged), truncated to
    the first 16 bytes.
    """
    return hashlib.sha256(uvci.encode("utf-8")).digest()[:16].hex()


def allowed_types(certificate: x509.Certificate) -> frozenset[str]:
    """Certificate types this DSC may sign: all, unless it carries DCC EKUs."""
    oids = _extended_key_usages(certificate) & DCC_EKUS
    if not oids:
        return frozenset(EKU_BY_TYPE)
    return frozenset(kind for kind, allowed in EKU_BY_TYPE.items() if oids & allowed)


def _extended_key_usages(certificate: x509.Certificate) -> set[str]:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return set()
    except ValueError:
        # cryptography refuses the whole extension list when one extension
        # breaks RFC 5280, e.g. an EKU listing no OID at all (EU test CO15).
        # Such a DSC still restricts what its DER names: a DCC OID is found
        # by its encoding (tag, length, value) in the signed part.
        tbs = certificate.tbs_certificate_bytes
        return {oid for oid in DCC_EKUS if _der_oid(oid) in tbs}
    return {usage.dotted_string for usage in usages}


def _der_oid(dotted: str) -> bytes:
    """An OID's DER (tag, length, value): an EKU of one OID, minus its 2-byte SEQUENCE header."""
    return x509.ExtendedKeyUsage([x509.ObjectIdentifier(dotted)]).public_bytes()[2:]


class TrustList:
    """Trusted DSCs by kid."""

    def __init__(self, certificates: Iterable[x509.Certificate] = ()) -> None:
        self._by_kid: dict[bytes, list[x509.Certificate]] = {}
        for certificate in certificates:
            kid = kid_of(certificate.public_bytes(Encoding.DER))
            self._by_kid.setdefault(kid, []).append(certificate)

    @classmethod
    def from_der(cls, ders: Iterable[bytes]) -> TrustList:
        return cls(x509.load_der_x509_certificate(der) for der in ders)

    def get(self, kid: bytes) -> list[x509.Certificate]:
        return list(self._by_kid.get(kid, ()))


def load_dsc(arg: str) -> bytes:
    """DER of a DSC given as a file (DER or PEM) or as base64 DER text.

    Raises ValueError saying what `arg` was taken for and why it failed.
    """
    if os.path.isfile(arg):
        return _der_from_file(Path(arg))
    try:
        der = base64.b64decode("".join(arg.split()), validate=True)
    except binascii.Error:
        raise ValueError(f"{arg[:40]!r} is neither a readable file nor base64 DER") from None
    return _checked_der(der, "the base64 text")


def _der_from_file(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError as e:
            raise ValueError(f"{path}: not a valid PEM certificate ({e})") from e
        return certificate.public_bytes(Encoding.DER)
    return _checked_der(data, str(path))


def _checked_der(der: bytes, source: str) -> bytes:
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise ValueError(f"{source} is not a DER X.509 certificate ({e})") from e
    return der
