"""Issuing certificates: the sequence comes from persisted history, each person is signed once per
change, a new dose supersedes (revokes) the old certificate, and what we sign verifies with an
independent COSE implementation (`cwt`).

Covers: two doses give two on the certificate (dn 2/2) and revoke the first; the same dose from two sites on
one day counts once and keeps the same certificate (its view lists both records); the EU's dn/sd encoding
(3/3 after two doses, 2/1 after Jcovden); a second dose arriving first is renumbered when the first arrives
(and its wrong `dose_number` is flagged); a redelivered handoff signs nothing; a certificate built before an
in-place view update cannot replace the newer one; a rotated key signs new certificates while old ones still
verify; every certificate is verified with an independent COSE implementation (the `cwt` package, given only
the DSC's public key); every product's certificate passes our verifier (schema and value sets included);
ICAO names; UVCIs of 160 random bits in base32; the COSE framing written by hand is CBOR's.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import zlib

import cbor2
import cwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from storage import certificates as store
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from vaxline.dcc.base45 import b45decode
from vaxline.dcc.issue import Signer, byte_string_head, expiry, new_uvci
from vaxline.dcc.keys import KeyStore
from vaxline.dcc.names import dcc_name, transliterate
from vaxline.dcc.payload import statement
from vaxline.dcc.trust import TrustList
from vaxline.dcc.verify import verify
from vaxline.sequence import HistoryDose, sequence
from vaxline.valuesets import SERIES_DOSES, VACCINE_PRODUCTS
from workers.certify import Certifier

VN = dt.timezone(dt.timedelta(hours=7))


def at(day: str, hour: int = 9) -> str:
    return dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=VN).isoformat()


async def current(db, national_id: str, *, doses: int | None = None):
    """The person's current certificate, once it states `doses` doses (if given)."""
    async def ready():
        row = await db.fetchrow("SELECT * FROM certificates WHERE national_id = $1 AND status = 'current'",
                                national_id)
        if row and (doses is None or len(json.loads(row["doses"])) == doses):
            return row
        return None
    return await wait_until(ready, message="certificate")


def independently_decoded(hc1: str, keys: KeyStore) -> dict:
    """Decode and verify with the `cwt` package, using only the DSC's public key."""
    assert hc1.startswith("HC1:")
    cose = zlib.decompress(b45decode(hc1[4:]))
    cose_keys = []
    for public in keys.public_keys():
        spki = x509.load_der_x509_certificate(public.der).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        cose_keys.append(cwt.COSEKey.from_pem(spki, kid=public.kid))
    return cwt.decode(cose, keys=cose_keys)


async def test_two_doses_two_on_the_certificate_and_the_first_is_revoked(settings, db):
    async with running_stack(settings, certifiers=1) as stack:
        _, token = await stack.site()
        first = dose(1, administered_at=at("2021-08-14"))
        assert (await stack.post(token, {"doses": [first]})).status == 202
        one = await current(db, first["national_id"], doses=1)
        second = dose(1, record_id="R-2nd", dose_number=2, administered_at=at("2021-09-20"))
        assert (await stack.post(token, {"doses": [second]})).status == 202
        two = await current(db, first["national_id"], doses=2)

    keys = KeyStore(settings.signing_keys_dir)
    claims = independently_decoded(two["hc1"], keys)
    assert claims[1] == "VN" and claims[4] > claims[6]
    assert dt.datetime.fromtimestamp(claims[4], dt.timezone.utc) == two["expires_at"]
    dcc = claims[-260][1]
    assert dcc["nam"] == dcc_name(first["full_name"]) and dcc["dob"] == first["birth_date"]
    [v] = dcc["v"]
    assert (v["dn"], v["sd"], v["dt"], v["co"], v["ci"]) == (2, 2, "2021-09-20", "VN", two["uvci"])
    assert v["mp"] == "EU/1/21/1529" and v["ma"] == "ORG-100001699" and v["tg"] == "840539006"
    assert two["uvci"].startswith("URN:UVCI:01:VN:") and two["uvci"] != one["uvci"]
    old = await db.fetchrow("SELECT status, superseded_by FROM certificates WHERE uvci = $1", one["uvci"])
    assert tuple(old) == ("revoked", two["uvci"])
    listed, _ = await store.revocations(db, limit=10)
    assert [r["hash"] for r in listed] == [_uvci_hash(one["uvci"])]


def _uvci_hash(uvci: str) -> str:
    from vaxline.dcc.trust import uvci_hash
    return uvci_hash(uvci)


async def test_same_dose_from_two_sites_on_one_day_counts_once_and_keeps_the_qr_valid(settings, db):
    async with running_stack(settings, certifiers=1) as stack:
        _, hospital = await stack.site("HOSP-1")
        _, district = await stack.site("DIST-1")
        d = dose(7, administered_at=at("2021-08-14", 9))
        assert (await stack.post(hospital, {"doses": [d]})).status == 202
        first = await current(db, d["national_id"], doses=1)
        assert (await stack.post(district, {"doses": [dict(d, administered_at=at("2021-08-14", 15))]})).status == 202
        row = await current(db, d["national_id"], doses=2)
    doses = json.loads(row["doses"])
    assert [(x["dn"], x["counted"], x["flags"]) for x in doses] == [(1, True, []), (1, False, ["same_day"])]
    # The DCC states the same dose as before: the citizen's QR is not revoked, its view lists both records.
    assert (row["uvci"], row["hc1"]) == (first["uvci"], first["hc1"])
    assert await db.fetchval("SELECT count(*) FROM certificates") == 1
    dcc = independently_decoded(row["hc1"], KeyStore(settings.signing_keys_dir))[-260][1]
    assert (dcc["v"][0]["dn"], dcc["v"][0]["sd"]) == (1, 2)


async def test_a_dose_arriving_before_the_earlier_one_still_gets_the_right_sequence(settings, db):
    async with running_stack(settings, certifiers=1) as stack:
        _, token = await stack.site()
        second = dose(3, record_id="R-2nd", dose_number=2, administered_at=at("2021-10-01"))
        first = dose(3, administered_at=at("2021-08-14"))
        assert (await stack.post(token, {"doses": [second]})).status == 202
        early = await current(db, second["national_id"], doses=1)
        assert json.loads(early["doses"])[0]["flags"] == ["dose_number_mismatch"]  # kept, flagged, not trusted
        assert (await stack.post(token, {"doses": [first]})).status == 202
        row = await current(db, second["national_id"], doses=2)
    assert [(x["record_id"], x["dn"], x["flags"]) for x in json.loads(row["doses"])] == [
        ("R-0000003", 1, []), ("R-2nd", 2, [])]
    dcc = independently_decoded(row["hc1"], KeyStore(settings.signing_keys_dir))[-260][1]
    assert (dcc["v"][0]["dn"], dcc["v"][0]["dt"]) == (2, "2021-10-01")


async def test_a_redelivered_handoff_issues_nothing_new(settings, db):
    async with running_stack(settings, certifiers=1) as stack:
        _, token = await stack.site()
        doses = [dose(n) for n in range(20)]
        assert (await stack.post(token, {"doses": doses})).status == 202
        for d in doses:
            await current(db, d["national_id"])
        pool = await _pool(settings)
        try:
            outcome = await Certifier(pool, KeyStore(settings.signing_keys_dir)).certify(
                {d["national_id"]: 0.0 for d in doses})
        finally:
            await pool.close()
    assert (outcome.issued, outcome.revoked, outcome.unchanged) == (0, 0, 20)
    assert await db.fetchval("SELECT count(*) FROM certificates") == 20


async def test_rotated_key_signs_new_certificates_and_old_ones_still_verify(settings, db):
    async with running_stack(settings, certifiers=1) as stack:
        _, token = await stack.site()
        first = dose(11, administered_at=at("2021-08-14"))
        assert (await stack.post(token, {"doses": [first]})).status == 202
        one = await current(db, first["national_id"], doses=1)
        keys = KeyStore(settings.signing_keys_dir)
        rotated = keys.create()
        second = dose(11, record_id="R-2nd", dose_number=2, administered_at=at("2021-09-20"))
        assert (await stack.post(token, {"doses": [second]})).status == 202
        two = await current(db, first["national_id"], doses=2)
    assert bytes(two["kid"]) == rotated.kid and bytes(one["kid"]) != rotated.kid
    assert len(keys.public_keys()) == 2
    independently_decoded(one["hc1"], keys)  # raises if the signature does not verify
    independently_decoded(two["hc1"], keys)


async def _pool(settings):
    import asyncpg
    return await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)


@pytest.mark.parametrize("products, expected", [
    (["EU/1/20/1528"], [(1, 2)]),
    (["EU/1/20/1528", "EU/1/20/1528"], [(1, 2), (2, 2)]),
    (["EU/1/21/1529", "EU/1/20/1528", "EU/1/20/1507"], [(1, 2), (2, 2), (3, 3)]),  # mixed, then a booster
    (["EU/1/20/1525"], [(1, 1)]),
    (["EU/1/20/1525", "EU/1/20/1528"], [(1, 1), (2, 1)]),  # a booster after Jcovden is 2/1
])
def test_dose_numbers_follow_the_eu_encoding(products, expected):
    base = dt.datetime(2021, 8, 1, 9, tzinfo=VN)
    history = [HistoryDose("S", f"R-{i}", p, "L", i + 1, base + dt.timedelta(days=60 * i)) for i, p in enumerate(products)]
    assert [(d.dn, d.sd) for d in sequence(history)] == expected


@pytest.mark.parametrize("name, fnt, gnt", [
    ("Đặng Thị Ánh Tuyết", "DANG", "THI<ANH<TUYET"),
    ("Nguyễn Văn Đức", "NGUYEN", "VAN<DUC"),
    ("Lê  Hoàng-Long", "LE", "HOANG<LONG"),
    ("Trương Mỹ Lan", "TRUONG", "MY<LAN"),
])
def test_names_are_icao_transliterated_family_name_first(name, fnt, gnt):
    nam = dcc_name(name)
    assert (nam["fnt"], nam["gnt"]) == (fnt, gnt)
    assert nam["fn"] == name.split()[0]


def test_transliteration_keeps_only_the_icao_alphabet():
    assert transliterate("Ôn Ư Ơ ờ ỹ Đ đ") == "ON<U<O<O<Y<D<D"
    assert dcc_name("Lê") == {"fn": "Lê", "fnt": "LE"}


@pytest.mark.parametrize("product", VACCINE_PRODUCTS)
def test_what_we_issue_passes_our_own_verifier_for_every_product(product, tmp_path):
    """Every product's certificate is schema-valid (value sets included), signed and current."""
    keys = KeyStore(tmp_path / "keys")
    keys.create()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    history = [HistoryDose("S-1", f"R-{i}", product, "L1", i + 1, now - dt.timedelta(days=60 - 30 * i))
               for i in range(3)]
    stated = statement("Võ Thị Sáu", dt.date(1933, 1, 1), history)
    uvci = new_uvci()
    hc1 = Signer(keys.signing_key()).sign(stated.dcc(uvci), now, expiry(now))
    verdict = verify(hc1, TrustList.from_der(k.der for k in keys.public_keys()))
    assert verdict.valid, verdict.reason
    v = verdict.payload["v"][0]
    booster = 1 if SERIES_DOSES[product] == 1 else 3  # EU encoding: 3/3 after two doses, 3/1 after one
    assert (v["dn"], v["sd"], v["ci"]) == (3, booster, uvci)
    assert len(hc1) < 1000  # fits a QR at error correction Q comfortably


async def test_a_certificate_built_from_an_older_view_does_not_replace_a_newer_one(db):
    """The swap checks the view too: a certifier that read before another updated the view in place
    loses, re-reads, and cannot put the older view back."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def new(uvci, previous, previous_view, view):
        return store.NewCertificate(uvci, "001090000001", previous, previous_view, b"dcc", view, "Lê Văn Nam",
                                    dt.date(1990, 1, 1), "[]", "HC1:X", None)

    written, _ = await store.issue(db, [new("U-1", None, None, b"v1")], kid=b"k", issued_at=now, expires_at=now)
    assert written == {"001090000001"}
    assert await store.update_views(db, [store.ViewUpdate("001090000001", "U-1", b"v1", b"v2", "[]")]) == {
        "001090000001"}
    stale = new("U-2", "U-1", b"v1", b"v1")  # built from the history as it was before the view update
    assert await store.issue(db, [stale], kid=b"k", issued_at=now, expires_at=now) == (set(), 0)
    assert await store.update_views(db, [store.ViewUpdate("001090000001", "U-1", b"v1", b"v3", "[]")]) == set()
    rows = await db.fetch("SELECT uvci, status, view_fingerprint FROM certificates ORDER BY uvci")
    assert [tuple(r) for r in rows] == [("U-1", "current", b"v2")]


def test_a_uvci_is_32_base32_characters_of_fresh_randomness():
    uvcis = [new_uvci() for _ in range(2000)]
    assert len(set(uvcis)) == len(uvcis)
    assert all(re.fullmatch(r"URN:UVCI:01:VN:[A-Z2-7]{32}", u) for u in uvcis)
    assert {c for u in uvcis for c in u[15:]} == set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")  # every symbol drawn


@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_the_cose_framing_written_by_hand_is_cbor2s(length):
    """Signer writes the payload's byte-string head itself (a certificate's payload is 250-1,200 bytes)."""
    assert byte_string_head(length) + b"x" * length == cbor2.dumps(b"x" * length)


def test_uvcis_are_distinct_across_a_buffer_refill_threads_and_a_fork():
    """new_uvci draws its randomness 4 KiB at a time: no UVCI repeats across a refill, between threads,
    or between a process and a child forked after the buffer was filled."""
    import os
    import threading

    first = [new_uvci() for _ in range(300)]  # past 128 a buffer: at least two refills
    other: list[str] = []
    thread = threading.Thread(target=lambda: other.extend(new_uvci() for _ in range(50)))
    thread.start()
    thread.join()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child writes its next UVCI and leaves at once
        os.write(write, new_uvci().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read, "rb") as pipe:
        childs = pipe.read().decode()
    parents = new_uvci()
    uvcis = [*first, *other, childs, parents]
    assert all(re.fullmatch(r"URN:UVCI:01:VN:[A-Z2-7]{32}", u) for u in uvcis)
    assert len(set(uvcis)) == len(uvcis)
