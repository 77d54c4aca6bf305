"""The server secret, and the short-lived signed links to a certificate that a lookup hands out.

A UVCI is printed in every QR, so it is no secret: `GET /v1/certificates/{uvci}` alone answers only what
the QR states. The full view and the QR image need `?expires=<epoch seconds>&token=<HMAC>`, where the
token is HMAC-SHA256 over the UVCI and the expiry under the server secret. Only a lookup (national ID,
birth date, and past the guess limit a one-time code) hands one out, valid `certificate_link_ttl`
seconds.

The secret is `VAXLINE_SERVER_SECRET` (hex), or `<data_dir>/server-secret`, made once (0600) by the
first process that needs it and read by the others; it never lives in the repository. As sensitive as a
signing key, the file is refused (vaxline.filemodes.LooseMode, naming the path, its mode and the chmod)
when it is looser than 0600 or its folder is writable by other users (who could replace it). The same secret
keys the national-ID hashes that count wrong birth dates in Redis (`keyed_digest`), so those keys say
nothing to whoever reads Redis. A new secret invalidates every link handed out (minutes' worth) and
restarts those counts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from .config import Settings
from .filemodes import OTHERS_WRITE, OWNER_ONLY, refuse_loose

SECRET_BYTES = 32
SECRET_FILE = "server-secret"


class BadSecret(ValueError):
    """The configured server secret is not hex, or is too short to be one."""


def server_secret(settings: Settings) -> bytes:
    """The deployment's server secret: the setting, else the data folder's file, made on first use."""
    if settings.server_secret:
        try:
            secret = bytes.fromhex(settings.server_secret)
        except ValueError as e:
            raise BadSecret("VAXLINE_SERVER_SECRET must be hex") from e
        if len(secret) < 16:
            raise BadSecret("VAXLINE_SERVER_SECRET must hold at least 16 bytes (32 hex digits)")
        return secret
    return _file_secret(settings.data_dir / SECRET_FILE)


def _file_secret(path: Path) -> bytes:
    """Read the secret, or write a new one where no other process has: written whole to a private file
    first, then linked into place (fails if one is there already), so no reader sees half of one. A file
    or folder that other users could read or replace is refused (LooseMode) before a byte is read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)  # under a umask of 002 too: not group-writable
    refuse_loose(path.parent, forbidden=OTHERS_WRITE, fix="go-w",
                 problem="writable by other users than its owner, who could replace the server secret in it")
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(SECRET_BYTES).hex().encode())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process was first: theirs is the secret
        finally:
            draft.unlink()
    refuse_loose(path, forbidden=OWNER_ONLY, fix="600")
    secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    if len(secret) < 16:
        raise BadSecret(f"{path} holds no usable secret")
    return secret


def keyed_digest(secret: bytes, purpose: str, text: str) -> str:
    """HMAC-SHA256 of `text` for `purpose` (a label that keeps one use's digests from matching another's)."""
    return hmac.new(secret, f"{purpose}\n{text}".encode(), hashlib.sha256).hexdigest()


class CertificateLinks:
    """Signs and checks `?expires=&token=` for a UVCI; `clock` is wall time (every process must agree)."""

    def __init__(self, secret: bytes, *, ttl: float, clock=time.time):
        self._secret = secret
        self.ttl = ttl
        self._clock = clock

    def token(self, uvci: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"certificate-link\n{uvci}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, uvci: str) -> tuple[str, int]:
        """(token, expires): a link valid `ttl` seconds from now."""
        expires = int(self._clock() + self.ttl)
        return self.token(uvci, expires), expires

    def query(self, uvci: str) -> tuple[str, int]:
        """The query string of a new link (`expires=...&token=...`) and its expiry."""
        token, expires = self.issue(uvci)
        return f"expires={expires}&token={token}", expires

    def check(self, uvci: str, token: str, expires: str) -> str | None:
        """None when the link is valid now; else why not ("expired" or "invalid")."""
        if not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return "invalid"
        if not hmac.compare_digest(self.token(uvci, int(expires)).encode(), token.encode("utf-8", "replace")):
            return "invalid"
        return "expired" if int(expires) < self._clock() else None
