"""Issuing: a DCC payload -> CWT -> COSE_Sign1 (ES256) -> zlib -> base45 -> "HC1:".

This runs once per person per persisted batch, so it is the certifier's hot
loop: the protected header is encoded once per key, the Sig_structure is
assembled from pre-encoded parts, zlib stores rather than searches (`deflate`),
and base45 goes through a table (vaxline.dcc.base45). What remains is one
CBOR encoding of the claims, one ECDSA signature.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import secrets
import threading
import zlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from .base45 import b45encode

PREFIX = "HC1:"
ISSUER_COUNTRY = "VN"
DCC_VERSION = "1.3.0"
UVCI_PREFIX = f"URN:UVCI:01:{ISSUER_COUNTRY}:"
COSE_SIGN1_TAG = 18
ES256 = -7
CWT_ISS, CWT_IAT, CWT_EXP, CWT_HCERT = 1, 6, 4, -260


# Each random byte keeps its low 5 bits, one base32 character (256 is a multiple of 32, so each is uniform):
# 32 bytes, 160 bits. base64.b32encode does the same in Python bytecode at 3.5% of a certifier's CPU.
_BASE32 = bytes.maketrans(bytes(range(256)), bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[i % 32] for i in range(256)))


def new_uvci() -> str:
    """URN:UVCI:01:VN:<32 characters of base32>: 160 random bits, so it is unguessable and never collides
    in practice (no retry loop on collision needed, unlike sequential or short random ids)."""
    return UVCI_PREFIX + _randomness.take(32).translate(_BASE32).decode()


class _Randomness(threading.local):
    """The operating system's randomness (secrets), drawn 4 KiB at a time: one getrandom() system call for
    128 UVCIs instead of one each (7% of a certifier's CPU). Each thread has its own; a forked child starts
    with none, so two processes never hand out the same bytes."""

    SIZE = 4096

    def __init__(self) -> None:
        self.buffer, self.offset = b"", 0

    def take(self, count: int) -> bytes:
        if self.offset + count > len(self.buffer):
            self.buffer, self.offset = secrets.token_bytes(self.SIZE), 0
        start = self.offset
        self.offset += count
        return self.buffer[start:self.offset]


_randomness = _Randomness()
os.register_at_fork(after_in_child=_randomness.__init__)


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
    """Encodes and signs certificates with one key.

    cbor2.dumps costs about 5 us a call whatever it encodes (it builds an encoder each time), which was
    three calls a certificate: the claims go through an encoder kept per thread, and the byte-string and
    COSE_Sign1 framing around them, fixed for a key but for two lengths, is written here."""

    def __init__(self, key: SigningKey):
        self.key = key
        self._protected = cbor2.dumps({1: ES256, 4: key.kid})
        # Sig_structure = ["Signature1", protected, external_aad, payload]: a 4-array whose first three
        # items never change for this key; only the payload's byte string is appended per certificate.
        self._sig_head = b"\x84" + cbor2.dumps("Signature1") + cbor2.dumps(self._protected) + b"\x40"
        # COSE_Sign1 = tag 18 [protected, unprotected {}, payload, signature]: all but the last two are fixed.
        self._cose_head = b"\xd2\x84" + cbor2.dumps(self._protected) + b"\xa0"
        # The Sig_structure is hashed here (hashlib) and signed as a digest: the same ECDSA signature, without
        # OpenSSL's digest context per call (12 us of 41 measured).
        self._algorithm = ec.ECDSA(Prehashed(hashes.SHA256()))
        self._local = threading.local()

    def sign(self, dcc: dict, issued_at: dt.datetime, expires_at: dt.datetime) -> str:
        """The HC1 text of a DCC payload."""
        claims = self._encode({
            CWT_ISS: ISSUER_COUNTRY,
            CWT_IAT: int(issued_at.timestamp()),
            CWT_EXP: int(expires_at.timestamp()),
            CWT_HCERT: {1: dcc},
        })
        payload = byte_string_head(len(claims)) + claims
        digest = hashlib.sha256(self._sig_head + payload).digest()
        r, s = decode_dss_signature(self.key.private_key.sign(digest, self._algorithm))
        # COSE wants the raw r||s (64 bytes: head 58 40), not DER.
        cose = self._cose_head + payload + b"\x58\x40" + r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return PREFIX + b45encode(deflate(cose))

    def _encode(self, value) -> bytes:
        local = self._local
        if not hasattr(local, "encoder"):
            local.buffer = io.BytesIO()
            local.encoder = cbor2.CBOREncoder(local.buffer)
        local.buffer.seek(0)
        local.buffer.truncate()
        local.encoder.encode(value)
        return local.buffer.getvalue()


def byte_string_head(length: int) -> bytes:
    """The head of a CBOR byte string (major type 2) of this length (RFC 8949, 3.1)."""
    if length < 24:
        return bytes((0x40 | length,))
    for marker, size in ((0x58, 1), (0x59, 2), (0x5A, 4), (0x5B, 8)):
        if length < 1 << (8 * size):
            return bytes((marker,)) + length.to_bytes(size, "big")
    raise ValueError(f"a byte string of {length} bytes is beyond CBOR")


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
