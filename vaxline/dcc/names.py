"""Names on a certificate: Vietnamese order, ICAO 9303 transliteration.

Vietnamese names are written family name first, so `fn` is the first word
and `gn` the rest ("Đặng Thị Ánh Tuyết": fn "Đặng", gn "Thị Ánh Tuyết").
The machine-readable forms keep A-Z and `<` only: diacritics are stripped
(Unicode decomposition), đ/Đ become D (it does not decompose), and spaces
and hyphens become `<` (ICAO 9303 part 3, section 6).
"""

from __future__ import annotations

import functools
import re
import unicodedata

MAX_LENGTH = 80  # the DCC schema's bound on every name field

_SEPARATORS = re.compile(r"[\s\-]+")
_NOT_ICAO = re.compile(r"[^A-Z<]")


@functools.lru_cache(maxsize=65_536)  # a certifier's hot path; family and given names repeat a great deal
def transliterate(name: str) -> str:
    """"Thị Ánh Tuyết" -> "THI<ANH<TUYET"."""
    text = name.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = _SEPARATORS.sub("<", text.strip().upper())
    return _NOT_ICAO.sub("", text)[:MAX_LENGTH]


def dcc_name(full_name: str) -> dict[str, str]:
    """The DCC `nam` object for a Vietnamese full name."""
    family, _, given = " ".join(full_name.split()).partition(" ")
    nam = {"fn": family[:MAX_LENGTH], "fnt": transliterate(family)}
    if given:
        nam |= {"gn": given[:MAX_LENGTH], "gnt": transliterate(given)}
    return nam
