"""What a certificate states, built from a person's persisted history.

The DCC carries the latest counted dose (`v` holds exactly one entry, per
the schema); the certificate's JSON view lists the whole sequence with its
flags. Fingerprints digest what the certificate states, so a history that
yields the same statement again is not reissued.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import msgspec

from vaxline.sequence import HistoryDose, latest, sequence
from vaxline.valuesets import VACCINE_MANUFACTURERS, VACCINE_PROPHYLAXIS

from .issue import DCC_VERSION, ISSUER_COUNTRY
from .names import dcc_name

ISSUER = "Ministry of Health of Viet Nam"
TARGET_COVID19 = "840539006"


class Statement(msgspec.Struct, frozen=True):
    nam: dict[str, str]
    dob: str
    doses: list[dict]

    def fingerprint(self, unnumbered: dict | None = None) -> bytes:
        """A digest of what the signed DCC states (all but its UVCI): when it changes, a new certificate.
        `unnumbered`: this statement's `dcc("")`, when the caller has it already."""
        return hashlib.sha256(msgspec.json.encode(self.dcc("") if unnumbered is None else unnumbered)).digest()

    def view_fingerprint(self) -> bytes:
        """A digest of the whole statement, flags included: when only this changes (a second record of a
        dose already counted), the certificate's view is updated in place and its QR stays valid."""
        return hashlib.sha256(msgspec.json.encode(self)).digest()

    def dcc(self, uvci: str) -> dict:
        dose = next(d for d in reversed(self.doses) if d["counted"])
        return {"ver": DCC_VERSION, "nam": self.nam, "dob": self.dob, "v": [{
            "tg": TARGET_COVID19, "vp": VACCINE_PROPHYLAXIS[dose["vaccine"]], "mp": dose["vaccine"],
            "ma": dose["manufacturer"], "dn": dose["dn"], "sd": dose["sd"], "dt": dose["date"],
            "co": ISSUER_COUNTRY, "is": ISSUER, "ci": uvci,
        }]}


def statement(full_name: str, birth_date: dt.date, history: list[HistoryDose]) -> Statement:
    doses = sequence(history)
    latest(doses)  # there is at least one counted dose
    return Statement(dcc_name(full_name), birth_date.isoformat(), [{
        "dn": d.dn, "sd": d.sd, "date": d.date.isoformat(), "vaccine": d.dose.vaccine,
        "manufacturer": VACCINE_MANUFACTURERS[d.dose.vaccine], "lot": d.dose.lot, "site": d.dose.site,
        "record_id": d.dose.record_id, "dose_number": d.dose.dose_number, "counted": d.counted,
        "flags": list(d.flags),
    } for d in doses])
