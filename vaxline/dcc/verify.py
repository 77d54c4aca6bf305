"""Verify an HC1 string offline: decode it, then judge it against a trust list.

Decoding peels the layers in order (prefix, base45, zlib, COSE_Sign1, CWT
claims) and stops at the first that fails: nothing after it can be read.
The checks on a decoded certificate (signature, expiry, key usage, schema,
revocation) all run, each recording its own outcome, so a caller sees every
reason a certificate is refused, not only the first. `verify` never raises
on bad input: whatever it is given, it answers with a `Verdict`.

Where the EU test data settles a question, it is followed: a certificate is
still valid at the very second of its `exp` (DK 1-12), and the signer
certificate (DSC) must be valid at the clock as well.

The payload is held to the schema of the version it states (`ver`); whether
its codes belong to the EU value sets is a business rule, the last stage
(`rules`), judged apart from the technical checks as the EU's verifier apps
do. A value-set miss still makes the verdict not valid (a vaccine or test
the EU does not list is not accepted); `stage` then says `rules`, and every
technical stage before it reads passed.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from types import MappingProxyType
from typing import NamedTuple

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from .base45 import b45decode
from .schema import GROUPS, schema_errors, valueset_misses
from .trust import TrustList, allowed_types, uvci_hash

STAGES = ("prefix", "base45", "zlib", "cose", "cbor", "signature", "expiry", "key_usage", "schema", "revocation",
          "rules")

PREFIX = "HC1:"
ES256, PS256 = -7, -37
# A QR code holds under 3 KB; a payload inflating past this is not a DCC.
MAX_COSE_BYTES = 64 * 1024

_COSE_SIGN1_TAG, _CWT_TAG = 18, 61
_ALG, _KID = 1, 4
_ISS, _EXP, _IAT, _HCERT = 1, 4, 6, -260
_LAST_NUMERIC_DATE = 253402300799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True)
class Verdict:
    valid: bool
    stage: str | None  # first stage that failed, None when valid
    reason: str  # "valid", or why not
    kid: str | None  # hex; None if the COSE layer was not reached
    payload: dict | None  # the DCC as plain JSON; None if not decoded
    issuer: str | None
    issued_at: int | None
    expires_at: int | None
    outcomes: Mapping[str, bool | None]  # per stage: True passed, False failed, None not run
    rules: tuple[str, ...] = ()  # the business rules broken (value-set misses), each with its field

    @property
    def uvci(self) -> str | None:
        """The certificate identifier (`ci`) of the decoded certificate, if any: what revocation is about."""
        for group in ("v", "t", "r"):
            entries = (self.payload or {}).get(group)
            if isinstance(entries, list) and entries and isinstance(entries[0], dict):
                ci = entries[0].get("ci")
                return ci if isinstance(ci, str) else None
        return None

    def to_json(self) -> dict:
        return {
            "valid": self.valid,
            "stage": self.stage,
            "reason": self.reason,
            "kid": self.kid,
            "payload": self.payload,
            "issuer": self.issuer,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "rules": list(self.rules),
        }


class _Undecodable(Exception):
    """A layer could not be decoded; the message says why."""


class _Sign1(NamedTuple):
    protected: bytes  # the serialized protected header, as signed
    alg: object
    kid: bytes | None
    payload: bytes
    signature: bytes


class _Claims(NamedTuple):
    sign1: _Sign1
    issuer: str | None
    issued_at: int | None
    expires_at: int | None
    dcc: dict


def verify(
    hc1: str,
    trust: TrustList,
    *,
    clock: datetime | None = None,
    revoked: Container[str] = frozenset(),
) -> Verdict:
    """Judge `hc1` at `clock` (default now; naive means UTC); `revoked` holds `uvci_hash` values."""
    outcomes: dict[str, bool | None] = dict.fromkeys(STAGES)
    claims = _decode(hc1, outcomes)
    if not isinstance(claims, _Claims):
        stage, reason, kid = claims
        return Verdict(False, stage, reason, _hex(kid), None, None, None, None, MappingProxyType(outcomes))
    reasons = _judge(claims, trust, _aware(clock), revoked, outcomes)
    failed = next((stage for stage in STAGES if outcomes[stage] is False), None)
    return Verdict(
        valid=failed is None,
        stage=failed,
        reason="; ".join(reasons) or "valid",
        kid=_hex(claims.sign1.kid),
        payload=claims.dcc,
        issuer=claims.issuer,
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
        outcomes=MappingProxyType(outcomes),
        rules=tuple(valueset_misses(claims.dcc)),
    )


def _decode(hc1: object, outcomes: dict[str, bool | None]) -> _Claims | tuple[str, str, bytes | None]:
    """Peel the layers, recording each outcome; at the first that fails: where, why, and the kid if read."""
    layer, kid = hc1, None
    for stage, decode in _DECODERS:
        try:
            layer = decode(layer)
        except _Undecodable as e:
            outcomes[stage] = False
            return stage, str(e), kid
        outcomes[stage] = True
        if isinstance(layer, _Sign1):
            kid = layer.kid
    return layer


_CLOCK = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?"
    r"\s*(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_clock(text: str) -> datetime:
    """A validation clock as the EU test data writes it (`VALIDATIONCLOCK`), always aware.

    RFC 3339 with `Z` or an offset, any number of fractional digits, and
    also without an offset (`2021-10-01T00:15:17`), which the EU's
    reference apps read as UTC, and so does this. Raises ValueError.
    """
    match = _CLOCK.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a date-time (e.g. 2021-08-14T09:30:00Z)")
    day = date.fromisoformat(match["date"])  # raises on 2021-02-30
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")
    clock = datetime(day.year, day.month, day.day, int(match["hour"] or 0), int(match["minute"] or 0),
                     int(match["second"] or 0), int(fraction), tzinfo=_offset(match["offset"]))
    return clock.astimezone(timezone.utc)


def _offset(text: str | None) -> timezone:
    if not text or text in "Zz":
        return timezone.utc
    digits = text[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
    if delta >= timedelta(hours=24):
        raise ValueError(f"UTC offset {text} out of range")
    return timezone(delta if text[0] == "+" else -delta)


def _aware(clock: datetime | None) -> datetime:
    if clock is None:
        return datetime.now(timezone.utc)
    return clock if clock.tzinfo else clock.replace(tzinfo=timezone.utc)


def _judge(
    claims: _Claims,
    trust: TrustList,
    clock: datetime,
    revoked: Container[str],
    outcomes: dict[str, bool | None],
) -> list[str]:
    """Run every check, record each outcome, return the reasons of those that failed."""
    sign1 = claims.sign1
    signer, signature_reason = _signature(sign1, trust)
    # Expiry and key usage judge the DSC the certificate names, even when
    # its signature does not verify: each check answers for itself.
    dsc = signer or next(iter(trust.get(sign1.kid or b"")), None)
    reasons = {
        "signature": signature_reason,
        "expiry": _expiry(claims, dsc, clock),
        "key_usage": _key_usage(claims.dcc, dsc) if dsc else None,
        "schema": _schema(claims.dcc),
        "revocation": _revocation(claims.dcc, revoked),
        "rules": _rules(claims.dcc),
    }
    for stage, reason in reasons.items():
        outcomes[stage] = reason is None
    if dsc is None:
        outcomes["key_usage"] = None  # no DSC to read the key usage from
    return [reason for reason in reasons.values() if reason]


# --- decoding: each layer from the one before, raising _Undecodable ---


def _unprefix(hc1: object) -> str:
    if not isinstance(hc1, str):
        raise _Undecodable(f"expected text, got {type(hc1).__name__}")
    # Line ends come from scanners and files; spaces are base45 digits.
    text = hc1.strip("\r\n")
    if not text.startswith(PREFIX):
        raise _Undecodable(f"does not start with {PREFIX!r} (starts with {text[:4]!r})")
    return text[len(PREFIX):]


def _base45(text: str) -> bytes:
    try:
        return b45decode(text)
    except ValueError as e:
        raise _Undecodable(f"not base45: {e}") from None


def _inflate(data: bytes) -> bytes:
    """zlib is mandatory: an uncompressed COSE (test Z2) is refused, not guessed at."""
    inflater = zlib.decompressobj()
    try:
        cose = inflater.decompress(data, MAX_COSE_BYTES)
    except zlib.error as e:
        raise _Undecodable(f"not zlib data ({e})") from None
    if inflater.unconsumed_tail:
        raise _Undecodable(f"inflates to more than {MAX_COSE_BYTES} bytes")
    if not inflater.eof:
        raise _Undecodable("the zlib stream is truncated")
    if inflater.unused_data:
        raise _Undecodable(f"{len(inflater.unused_data)} bytes follow the zlib stream")
    return cose


def _cose(data: bytes) -> _Sign1:
    """COSE_Sign1 (RFC 8152), tagged 18, untagged, or inside a CWT tag 61."""
    message = _cbor(data, "the COSE message")
    if isinstance(message, cbor2.CBORTag) and message.tag == _CWT_TAG:
        message = message.value
    if isinstance(message, cbor2.CBORTag) and message.tag == _COSE_SIGN1_TAG:
        message = message.value
    if not isinstance(message, (list, tuple)) or len(message) != 4:
        raise _Undecodable("not a COSE_Sign1 structure (an array of 4)")
    protected, unprotected, payload, signature = message
    if not isinstance(protected, bytes):
        raise _Undecodable("the COSE protected header is not a byte string")
    header = _cbor(protected, "the COSE protected header") if protected else {}
    if not isinstance(header, Mapping) or not isinstance(unprotected, Mapping):
        raise _Undecodable("a COSE header is not a map")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise _Undecodable("the COSE payload or signature is not a byte string")
    kid = header[_KID] if _KID in header else unprotected.get(_KID)
    if kid is not None and not isinstance(kid, bytes):
        raise _Undecodable("the COSE kid is not a byte string")
    alg = header[_ALG] if _ALG in header else unprotected.get(_ALG)
    return _Sign1(protected, alg, kid, payload, signature)


def _claims(sign1: _Sign1) -> _Claims:
    claims = _cbor(sign1.payload, "the CWT payload")
    if not isinstance(claims, Mapping):
        raise _Undecodable("the CWT payload is not a claims map")
    hcert = claims.get(_HCERT)
    if not isinstance(hcert, Mapping) or not isinstance(hcert.get(1), Mapping):
        raise _Undecodable("no DCC map at CWT claim -260/1")
    issuer = claims.get(_ISS)
    return _Claims(
        sign1,
        issuer if isinstance(issuer, str) else None,
        _numeric_date(claims.get(_IAT)),
        _numeric_date(claims.get(_EXP)),
        _json(hcert[1]),
    )


_DECODERS: tuple[tuple[str, Callable], ...] = (
    ("prefix", _unprefix),
    ("base45", _base45),
    ("zlib", _inflate),
    ("cose", _cose),
    ("cbor", _claims),
)


def _cbor(data: bytes, what: str) -> object:
    """One CBOR item filling `data` exactly (cbor2 alone ignores trailing bytes)."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except Exception as e:  # noqa: BLE001 (see below)
        # Beyond CBORDecodeError, cbor2's built-in tag decoders (decimal
        # fractions, regexes, MIME, UUIDs...) raise whatever their target
        # type raises on hostile input, e.g. TypeError.
        raise _Undecodable(f"{what} is not valid CBOR ({e})") from None
    if stream.tell() != len(data):
        raise _Undecodable(f"{len(data) - stream.tell()} bytes follow {what}")
    return item


def _numeric_date(value: object) -> int | None:
    """A CWT NumericDate as whole seconds; None if absent or beyond year 9999."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= _LAST_NUMERIC_DATE:
        return int(value)
    return None


def _json(value: object) -> object:
    """The DCC as plain JSON: cbor2's frozendicts, tuples and tagged dates undone."""
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise _Undecodable("the DCC has a map key that is not text")
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise _Undecodable(f"the DCC holds a {type(value).__name__}, which JSON has no form for")


# --- checks on a decoded certificate: each returns why it fails, or None ---


def _signature(sign1: _Sign1, trust: TrustList) -> tuple[x509.Certificate | None, str | None]:
    """The trusted DSC whose key verified the signature, or why there is none."""
    if sign1.kid is None:
        return None, "no kid in the COSE headers"
    candidates = trust.get(sign1.kid)
    if not candidates:
        return None, f"unknown kid {sign1.kid.hex()}"
    if sign1.alg not in (ES256, PS256):
        return None, f"unsupported COSE alg {sign1.alg!r}"
    signed = cbor2.dumps(["Signature1", sign1.protected, b"", sign1.payload])
    for certificate in candidates:  # kids can collide: any one may be the signer
        if _signed_by(certificate, sign1.alg, sign1.signature, signed):
            return certificate, None
    return None, f"the signature does not verify with the DSC of kid {sign1.kid.hex()}"


def _signed_by(certificate: x509.Certificate, alg: object, signature: bytes, signed: bytes) -> bool:
    try:
        key = certificate.public_key()
        if alg == ES256 and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            # COSE carries r||s; cryptography wants the DER sequence.
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(SHA256()))
            return True
        if alg == PS256 and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PSS(padding.MGF1(SHA256()), salt_length=32), SHA256())
            return True
    except (InvalidSignature, UnsupportedAlgorithm):
        pass
    return False


def _expiry(claims: _Claims, dsc: x509.Certificate | None, clock: datetime) -> str | None:
    now = clock.timestamp()
    if claims.issued_at is None or claims.expires_at is None:
        return "no valid iat or exp claim"
    if now < claims.issued_at:
        return f"issued at {_utc(claims.issued_at)}, after the clock"
    if now > claims.expires_at:
        return f"expired at {_utc(claims.expires_at)}"
    if dsc and not dsc.not_valid_before_utc <= clock <= dsc.not_valid_after_utc:
        return f"the signer certificate is valid {dsc.not_valid_before_utc} to {dsc.not_valid_after_utc} only"
    return None


def _key_usage(dcc: dict, dsc: x509.Certificate) -> str | None:
    kinds = [group for group in GROUPS if group in dcc]
    if not kinds:
        return "no v, t or r entry to match against the key usage"
    refused = [kind for kind in kinds if kind not in allowed_types(dsc)]
    if refused:
        return f"the signer certificate may not sign {'/'.join(refused)} certificates"
    return None


def _schema(dcc: dict) -> str | None:
    errors = schema_errors(dcc)
    return f"schema: {', '.join(errors)}" if errors else None


def _rules(dcc: dict) -> str | None:
    misses = valueset_misses(dcc)
    return f"rules: {', '.join(misses)}" if misses else None


def _revocation(dcc: dict, revoked: Container[str]) -> str | None:
    for uvci in _uvcis(dcc):
        if uvci_hash(uvci) in revoked:
            return f"{uvci} is revoked"
    return None


def _uvcis(dcc: dict) -> Iterator[str]:
    for group in GROUPS:
        entries = dcc.get(group)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("ci"), str):
                yield entry["ci"]


def _utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def _hex(kid: bytes | None) -> str | None:
    return kid.hex() if kid is not None else None
