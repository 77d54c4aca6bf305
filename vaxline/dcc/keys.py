"""Signing keys: a directory of P-256 keys and their self-signed signer certificates (DSC).

    keys/<kid hex>.key   PKCS#8 PEM, mode 0600: read by certifiers only, never served or logged
    keys/<kid hex>.crt   the DSC, PEM: the trust list is every unexpired one

The folder is 0700 and each private key 0600: loading refuses a folder or a key that another user could
read (KeyPermissions, naming the path, its mode and the chmod that fixes it), as ssh refuses a key.
KeyPermissions is a vaxline.filemodes.LooseMode, not an OSError: nobody may take it for an I/O failure
to wait out. `version()` changes with a mode too, so a chmod that fixes one is noticed without a restart.

Rotation adds a key; certifiers sign with the newest one and the older ones
stay in the trust list, so certificates they signed keep verifying. A key
signs only while its DSC outlives a certificate issued now (12 months): a
DSC valid 2 years signs during its first year, so keys are rotated yearly
(`vaxline run` and `vaxline work` do it by themselves, a month ahead; `vaxline keys rotate` otherwise).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vaxline.filemodes import LooseMode, refuse_loose

from .issue import SigningKey, expiry
from .trust import EKU_VACCINATION, kid_of

DSC_VALIDITY = dt.timedelta(days=2 * 365)  # longer than any certificate it signs (12 months)
# `vaxline run` and `vaxline work` rotate while the newest key still signs for this long: the new key is in
# the trust list a month before it is needed, and a failed rotation leaves a month to notice (an alert).
ROTATE_AHEAD = dt.timedelta(days=30)


class NoSigningKey(FileNotFoundError):
    """No key here may sign now."""


class KeyPermissions(LooseMode):
    """The key folder, a private key or a DSC is open to other users than its owner: refused, not loaded."""


# What each may allow beyond its owner: nothing for the folder and the private keys; a DSC is public
# (0644), yet nobody else may write one, or they would add a signer to the trust list.
_FOLDER, _PRIVATE, _PUBLIC = (0o700, 0o077), (0o600, 0o077), (0o644, 0o022)


@dataclass(frozen=True)
class PublicKey:
    kid: bytes
    der: bytes
    not_after: dt.datetime


class KeyStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def create(self, *, now: dt.datetime | None = None) -> PublicKey:
        """A new key and its DSC, written atomically (the certificate last: it is what makes a key visible)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        self.directory.mkdir(parents=True, exist_ok=True, mode=_FOLDER[0])  # umask may only narrow it
        self.check_modes()  # a folder that was there already, looser: refused before a key goes into it
        private_key = ec.generate_private_key(ec.SECP256R1())
        der = _self_signed_dsc(private_key, now).public_bytes(serialization.Encoding.DER)
        kid = kid_of(der).hex()
        pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        _write(self.directory / f"{kid}.key", pem, mode=_PRIVATE[0])
        _write(self.directory / f"{kid}.crt", x509.load_der_x509_certificate(der).public_bytes(
            serialization.Encoding.PEM), mode=_PUBLIC[0])
        return PublicKey(kid_of(der), der, now + DSC_VALIDITY)

    def ensure(self, *, ahead: dt.timedelta = dt.timedelta(0)) -> PublicKey | None:
        """Create a key unless one can sign now and still `ahead` from now; the new key, or None if one could."""
        try:
            self.signing_key(now=dt.datetime.now(dt.UTC) + ahead)
        except NoSigningKey:
            return self.create()
        return None

    def signing_validity(self, *, now: dt.datetime | None = None) -> float:
        """Seconds until the DSC of the key that signs now expires; 0 when none can sign. A key signs while
        this exceeds a certificate's validity (12 months): under 12 months, the next key signs."""
        now = now or dt.datetime.now(dt.UTC)
        try:
            key = self.signing_key(now=now)
        except NoSigningKey:
            return 0.0
        dsc = x509.load_der_x509_certificate(key.certificate_der)
        return max(0.0, (dsc.not_valid_after_utc - now).total_seconds())

    def public_keys(self, *, now: dt.datetime | None = None, include_expired: bool = False) -> list[PublicKey]:
        """The trust list: every DSC in the directory not yet expired, oldest first (by validity start,
        then by when its file was written: two keys made within a second start alike)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        self.check_modes()
        keys = []
        for path in self.directory.glob("*.crt") if self.directory.is_dir() else []:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
            if include_expired or certificate.not_valid_after_utc > now:
                der = certificate.public_bytes(serialization.Encoding.DER)
                order = (certificate.not_valid_before_utc, path.stat().st_mtime_ns)
                keys.append((order, PublicKey(kid_of(der), der, certificate.not_valid_after_utc)))
        return [key for _, key in sorted(keys, key=lambda pair: pair[0])]

    def signing_key(self, *, now: dt.datetime | None = None) -> SigningKey:
        """The newest key that has its private half here and whose DSC outlives a certificate issued now."""
        now = now or dt.datetime.now(dt.timezone.utc)
        for public in reversed(self.public_keys(now=now)):
            path = self.directory / f"{public.kid.hex()}.key"
            if path.exists() and public.not_after >= expiry(now):
                private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                return SigningKey(public.kid, private_key, public.der)
        raise NoSigningKey(f"no key in {self.directory} can sign a certificate valid 12 months from now:"
                           " run `vaxline keys init` (or `vaxline keys rotate` when the newest is in its last year)")

    def check_modes(self) -> None:
        """Raise KeyPermissions unless the folder is 0700 (or stricter), each private key 0600 and no DSC
        writable by others; a folder that is not there yet passes."""
        if not self.directory.is_dir():
            return
        _check_mode(self.directory, *_FOLDER)
        for path in sorted(self.directory.iterdir()):
            if path.suffix == ".key":
                _check_mode(path, *_PRIVATE)
            elif path.suffix == ".crt":
                _check_mode(path, *_PUBLIC)

    def version(self) -> tuple:
        """Changes when a key is added, removed or replaced, or when the folder's or a file's mode changes
        (a chmod leaves the folder's mtime alone, and a timestamp may not move within a clock tick): the
        certifiers' signer and ingest's trust list reload then. A few stats: the folder holds a key a year."""
        try:
            folder = self.directory.stat()
        except FileNotFoundError:
            return ()
        try:
            with os.scandir(self.directory) as entries:
                files = sorted(_file_version(entry) for entry in entries)
        except OSError:  # not ours to list: loading says so
            files = []
        return (folder.st_ino, folder.st_mode, folder.st_mtime_ns, folder.st_ctime_ns, *files)


def _self_signed_dsc(private_key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vaxline"),
        x509.NameAttribute(NameOID.COMMON_NAME, "vaxline DSC"),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + DSC_VALIDITY)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(EKU_VACCINATION)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()), critical=False)
        .sign(private_key, hashes.SHA256())
    )


def _check_mode(path: Path, wanted: int, forbidden: int) -> None:
    refuse_loose(path, forbidden=forbidden, fix=f"{wanted:o}", error=KeyPermissions)


def _file_version(entry: os.DirEntry) -> tuple:
    try:
        found = entry.stat()
    except FileNotFoundError:  # removed while listing: the folder's mtime has changed anyway
        return (entry.name,)
    return (entry.name, found.st_ino, found.st_mode, found.st_ctime_ns)


def _write(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # a .tmp left by a crash would keep its old mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
