"""Base45 (RFC 9285), the QR-friendly text encoding of the DCC.

Every two bytes become three characters of the QR alphanumeric set, least
significant digit first; a trailing odd byte becomes two. Encoding is on the
issuer's hot path (one certificate per person per batch), so it goes through
a table of all 65,536 byte pairs instead of arithmetic per pair.
"""

from __future__ import annotations

import array
import sys
from operator import itemgetter

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}

_PAIR = [ALPHABET[v % 45] + ALPHABET[v // 45 % 45] + ALPHABET[v // 2025] for v in range(65536)]


def b45encode(data: bytes) -> str:
    n = len(data) & ~1
    pairs = array.array("H", data[:n])  # native order: swapped below where that is little-endian
    if sys.byteorder == "little":  # pairs are read big-endian
        pairs.byteswap()
    # One itemgetter of all the pairs gathers them from the table in C: under callgrind, 3,800 instructions a
    # certificate fewer than a comprehension (0.6% of build()); map(__getitem__) is slower than both. Timed in
    # a certifier's loop the difference is within the machine's noise, as was arithmetic on whole-batch
    # integers instead of the table. itemgetter of one index returns the item itself, which join reads as its
    # three characters alike; of none it cannot be made.
    out = "".join(itemgetter(*pairs)(_PAIR)) if pairs else ""
    if n < len(data):
        v = data[-1]
        out += ALPHABET[v % 45] + ALPHABET[v // 45]
    return out


def b45decode(text: str) -> bytes:
    """Raises ValueError naming the first character or group that is not base45."""
    try:
        digits = [_VALUE[c] for c in text]
    except KeyError as e:
        raise ValueError(f"{e.args[0]!r} is not a base45 character") from None
    if len(digits) % 3 == 1:
        raise ValueError(f"a base45 text cannot be {len(digits)} characters long")
    out = bytearray()
    for i in range(0, len(digits) - 2, 3):
        v = digits[i] + digits[i + 1] * 45 + digits[i + 2] * 2025
        if v > 0xFFFF:
            raise ValueError(f"group {i // 3} encodes {v}, more than two bytes")
        out += v.to_bytes(2, "big")
    if len(digits) % 3 == 2:
        v = digits[-2] + digits[-1] * 45
        if v > 0xFF:
            raise ValueError(f"the last group encodes {v}, more than one byte")
        out.append(v)
    return bytes(out)
