"""Issuing: a DCC payload -> CWT -> COSE_Sign1 (ES256) -> zlib -> base45 -> "HC1:".

This runs once per person per persisted batch, so it is the certifier's hot
loop: the protected header is encoded once per key, the Sig_structure is
assembled from pre-encoded parts, zlib stores rather than searches (`deflate`),
and base45 goes through a table (vaxline.dcc.base45). What remains is one
CBOR encoding of the claims, one ECDSA signature.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import zlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .base45 import b45encode

PREFIX = "HC1:"
ISSUER_COUNTRY = "VN"
DCC_VERSION = "1.3.0"
UVCI_PREFIX = f"URN:UVCI:01:{ISSUER_COUNTRY}:"
COSE_SIGN1_TAG = 18
ES256 = -7
CWT_ISS, CWT_IAT, CWT_EXP, CWT_HCERT = 1, 6, 4, -260


def new_uvci() -> str:
    """URN:UVCI:01:VN:<32 characters of base32>: 160 random bits, so it is unguessable and never collides
    in practice (no retry loop on collision needed, unlike sequential or short random ids)."""
    return UVCI_PREFIX + base64.b32encode(secrets.token_bytes(20)).decode()


def expiry(issued_at: dt.datetime) -> dt.datetime:
    """12 calendar months later (29 February falls back to the 28th)."""
    try:
        return issued_at.replace(year=issued_at.year + 1)
    except ValueError:
        return issued_at.replace(year=issued_at.year + 1, day=28)


@dataclass(frozen=True)
class SigningKey:
    kid: bytes
    private_key: ec.EllipticCurvePrivateKey
    certificate_der: bytes

    def __repr__(self) -> str:  # the private key never appears in a log or a traceback
        return f"SigningKey(kid={self.kid.hex()})"


class Signer:
    """Encodes and signs certificates with one key."""

    def __init__(self, key: SigningKey):
        self.key = key
        self._protected = cbor2.dumps({1: ES256, 4: key.kid})
        # Sig_structure = ["Signature1", protected, external_aad, payload]: a 4-array whose first three
        # items never change for this key; only the payload's byte string is appended per certificate.
        self._sig_head = b"\x84" + cbor2.dumps("Signature1") + cbor2.dumps(self._protected) + b"\x40"
        self._algorithm = ec.ECDSA(hashes.SHA256())

    def sign(self, dcc: dict, issued_at: dt.datetime, expires_at: dt.datetime) -> str:
        """The HC1 text of a DCC payload."""
        claims = cbor2.dumps({
            CWT_ISS: ISSUER_COUNTRY,
            CWT_IAT: int(issued_at.timestamp()),
            CWT_EXP: int(expires_at.timestamp()),
            CWT_HCERT: {1: dcc},
        })
        payload = cbor2.dumps(claims)  # the byte string header + the claims
        r, s = decode_dss_signature(self.key.private_key.sign(self._sig_head + payload, self._algorithm))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # COSE wants raw r||s, not DER
        cose = cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [self._protected, {}, claims, signature]))
        return PREFIX + b45encode(deflate(cose))


# The zlib stream holds the COSE message in stored blocks (level 0). Measured on 3,000 one-dose certificates,
# level 9 made a 361-byte message 368 bytes, stored 372: most of it is random (the signature, the UVCI, the
# kid), so there is nothing to compress, and deflate's search cost 26-35 us a certificate against 1-8 us.
# The header must be 78 01, 78 5E, 78 9C or 78 DA: the EU's verifier app (dgca-verifier-app-android,
# DefaultCompressorService) inflates only those and reads anything else as raw COSE, so a smaller window
# (whose header states it: 48 .. for 4 KiB) would make every certificate invalid there. Every inflater reads
# stored blocks (RFC 1951, 3.2.4); the window and hash table sizes only matter to the compressor.
ZLIB_LEVEL, ZLIB_WBITS, ZLIB_MEMLEVEL = 0, 15, 1
EU_ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEMLEVEL)
    return compressor.compress(data) + compressor.flush()
