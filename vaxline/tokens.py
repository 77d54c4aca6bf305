"""Site bearer tokens: random, shown once, stored only as a SHA-256 hash.

A token carries 256 bits of randomness, so a fast hash is enough (no password
stretching needed), and lookup by hash means no token is ever compared
character by character against a secret.
"""

import hashlib
import secrets

PREFIX = "vx_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
