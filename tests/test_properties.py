"""Properties, with Hypothesis: the dose validator against the published document, the stream entry and the
persist path behind it, and the certificate codec.

- A dose built within the document's constraints (ingest.openapi: patterns, enums, lengths, bounds and the
  rules `check_dose` adds) is accepted, survives the stream entry encoding unchanged, and is persisted as sent.
- A dose the validator rejects is told which field is wrong; the document's patterns mean the whole string, as
  JSON Schema reads them.
- base45 is the identity on any bytes; a signed DCC payload verifies and decodes to the payload that was signed.

Seeded (`derandomize`): CI runs the same examples every time. Generated national IDs and names are never
logged (the session fixture that scans every log line would fail the run).

Covers: doses built from the document's constraints are accepted (JSON and msgpack), survive the stream
entry encoding unchanged, and persist as sent through the worker's path (entry decoding, COPY rows, the
persist transaction, on real Postgres); a dose made wrong in one field (a value, a missing or unknown field,
not an object) is rejected naming that field; the national ID and phone patterns match the whole string;
base45 is the identity on any bytes; any payload signed and verified comes back unchanged with a valid
signature, and the certificate of any history verifies, schema and value sets included.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import hypothesis
import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from ingest import openapi
from storage import doses as dose_store
from storage.sites import add_site
from vaxline.dcc.base45 import b45decode, b45encode
from vaxline.dcc.issue import Signer, expiry, new_uvci
from vaxline.dcc.keys import KeyStore
from vaxline.dcc.payload import statement
from vaxline.dcc.trust import TrustList
from vaxline.dcc.verify import verify
from vaxline.doses import CLOCK_SKEW, EARLIEST_BIRTH, EARLIEST_DOSE, BatchValidator
from vaxline.entries import DOSE_FIELDS, decode_entry, encode_entry
from vaxline.sequence import HistoryDose
from vaxline.valuesets import VACCINE_PRODUCTS
from workers.consume import StreamEntry
from workers.rows import decode, to_rows

SETTINGS = hypothesis.settings(derandomize=True, database=None, deadline=None,
                               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def examples(n: int) -> hypothesis.settings:
    return hypothesis.settings(SETTINGS, max_examples=n)

DOSE = openapi.document()["components"]["schemas"]["Dose"]
PROPERTIES = DOSE["properties"]
NOW = dt.datetime.now(dt.timezone.utc)
validator = BatchValidator(max_doses=1000)


# -- strategies, read from the document's Dose schema ---------------------------------------------------------

def _variant(name: str) -> dict:
    """The property's schema, without the `null` an optional field also takes."""
    schema = PROPERTIES[name]
    return next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)


def _printable_text(name: str) -> st.SearchStrategy[str]:
    """1-N characters that are neither control, format, separator nor unassigned (but the space): what the
    document's printable pattern and str.isprintable() both accept."""
    schema = _variant(name)
    assert schema["pattern"] == openapi.PRINTABLE_PATTERN
    alphabet = st.characters(codec="utf-8", exclude_categories=("C", "Z")) | st.just(" ")
    return st.text(alphabet, min_size=schema["minLength"], max_size=schema["maxLength"])


def _matching(name: str) -> st.SearchStrategy[str]:
    return st.from_regex(_variant(name)["pattern"], fullmatch=True)


def _optional(name: str, strategy) -> st.SearchStrategy:
    """A field the document does not require: left out, null, or a value."""
    assert name not in DOSE["required"]
    return st.sampled_from(["absent", "null", "value"]).flatmap(
        lambda how: st.just(how) if how != "value" else strategy)


_offsets = st.integers(-12 * 60, 14 * 60).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))


@st.composite
def valid_doses(draw) -> dict:
    """A dose as JSON, within every constraint the document states."""
    administered_at = draw(st.datetimes(min_value=EARLIEST_DOSE.replace(tzinfo=None) + dt.timedelta(days=1),
                                        max_value=NOW.replace(tzinfo=None), timezones=_offsets))
    # The document's bounds: from 2021-01-01, not in the future; a birth date from 1900-01-01, not after it.
    hypothesis.assume(EARLIEST_DOSE <= administered_at <= NOW + CLOCK_SKEW)
    dose = {
        "record_id": draw(_printable_text("record_id")),
        "national_id": draw(_matching("national_id")),
        "full_name": draw(_printable_text("full_name")),
        "birth_date": draw(st.dates(EARLIEST_BIRTH, administered_at.date())).isoformat(),
        "vaccine": draw(st.sampled_from(PROPERTIES["vaccine"]["enum"])),
        "lot": draw(_printable_text("lot")),
        "dose_number": draw(st.integers(PROPERTIES["dose_number"]["minimum"], PROPERTIES["dose_number"]["maximum"])),
        "administered_at": administered_at.isoformat(),
    }
    for name, strategy in (("sex", st.sampled_from(_variant("sex")["enum"])), ("phone", _matching("phone"))):
        value = draw(_optional(name, strategy))
        if value != "absent":
            dose[name] = None if value == "null" else value
    return dose


def batch(doses: list[dict], fmt: str) -> bytes:
    body = {"doses": doses}
    return msgspec.json.encode(body) if fmt == "json" else msgspec.msgpack.encode(body)


# -- the validator and the stream entry ------------------------------------------------------------------------

@examples(300)
@given(doses=st.lists(valid_doses(), min_size=1, max_size=5), fmt=st.sampled_from(["json", "msgpack"]))
def test_a_dose_within_the_documents_constraints_is_accepted_and_survives_the_stream_entry(doses, fmt):
    accepted, rejected = validator.validate(batch(doses, fmt), fmt)
    assert rejected == [], "the document allows what the validator refuses"
    assert len(accepted) == len(doses)
    for sent, dose in zip(doses, accepted):
        assert (dose.record_id, dose.national_id, dose.full_name, dose.lot) == (
            sent["record_id"], sent["national_id"], sent["full_name"], sent["lot"])
        assert dose.administered_at == dt.datetime.fromisoformat(sent["administered_at"])
    entry = decode_entry(encode_entry(site_id=7, received_at=1_700_000_000.5, doses=accepted))
    assert (entry.site_id, entry.received_at, entry.corrections) == (7, 1_700_000_000.5, [])
    assert entry.doses == [msgspec.structs.astuple(dose) for dose in accepted]


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                            max_leaves=5)


@st.composite
def broken_doses(draw) -> tuple[object, str | None]:
    """A valid dose with one thing made wrong (a field's value, a required field dropped, an unknown field added),
    or not an object at all; and the field at fault."""
    dose = draw(valid_doses())
    how = draw(st.sampled_from(["value", "drop", "unknown", "not an object"]))
    if how == "not an object":
        return draw(_json_values.filter(lambda value: not isinstance(value, dict))), None
    if how == "unknown":
        name = draw(st.text(min_size=1).filter(lambda text: text not in DOSE_FIELDS))
        return {**dose, name: draw(_json_values)}, name
    if how == "drop":
        name = draw(st.sampled_from(DOSE["required"]))
        return {k: v for k, v in dose.items() if k != name}, name
    name = draw(st.sampled_from(DOSE_FIELDS))
    return {**dose, name: draw(_json_values)}, name


@examples(400)
@given(broken=broken_doses(), fmt=st.sampled_from(["json", "msgpack"]))
def test_a_rejected_dose_is_told_which_field_is_wrong(broken, fmt):
    item, culprit = broken
    accepted, rejected = validator.validate(batch([item], fmt), fmt)
    if accepted:  # the new value happened to be valid too (a null phone, another vaccine ...)
        return
    [rejection] = rejected
    named = {error.field for error in rejection.errors}
    assert named and all(error.reason for error in rejection.errors)
    if culprit is None:
        assert named == {"(dose)"}
    elif culprit == "administered_at":  # moved before the birth date, the birth date is the one at fault
        assert named & {"administered_at", "birth_date"}, named
    else:
        assert culprit in named, (culprit, named)


@examples(100)
@given(dose=valid_doses(), field=st.sampled_from(["national_id", "phone"]), tail=st.sampled_from(["\n", "\r\n", " "]))
def test_the_patterns_mean_the_whole_string(dose, field, tail):
    """JSON Schema reads `$` as the end of the string; Python's re also matches it before a final newline."""
    value = (dose.get(field) or "0912345678") + tail
    assert not re.fullmatch(_variant(field)["pattern"].strip("^$"), value)
    accepted, rejected = validator.validate(batch([{**dose, field: value}], "json"), "json")
    assert not accepted and field in {error.field for error in rejected[0].errors}


# -- what the validator accepts persists --------------------------------------------------------------------------

@pytest.fixture
async def persisting(db):
    await dose_store.prepare_connection(db)
    return db


_sites = iter(range(10**9))


@examples(40)
@given(doses=st.lists(valid_doses(), min_size=1, max_size=4))
async def test_what_the_validator_accepts_persists_as_sent(persisting, doses):
    db = persisting
    site, _ = await add_site(db, code=f"P-{next(_sites)}", name="Property site", province=1, kind="fixed")
    accepted, rejected = validator.validate(batch(doses, "json"), "json")
    assert not rejected
    # Through the worker's path: the stream entry, its decoding, the COPY rows, the persist transaction.
    payload = encode_entry(site_id=site.site_id, received_at=NOW.timestamp(), doses=accepted)
    rows, counts = to_rows([decode(StreamEntry(shard=0, entry_id=f"{next(_sites) + 1}-0", payload=payload))])
    [receipt] = await dose_store.persist(db, rows, counts)
    first = {dose.record_id: dose for dose in reversed(accepted)}  # a record id sent twice: the first is kept
    assert (receipt.accepted, receipt.inserted) == (len(accepted), len(first))
    stored = {r["record_id"]: r for r in await db.fetch(
        f"SELECT {', '.join(DOSE_FIELDS)} FROM doses WHERE site_id = $1", site.site_id)}
    assert stored.keys() == first.keys()
    for record_id, dose in first.items():
        assert tuple(stored[record_id][name] for name in DOSE_FIELDS) == msgspec.structs.astuple(dose)


# -- the certificate codec ---------------------------------------------------------------------------------------------

@examples(500)
@given(data=st.binary(max_size=600))
def test_base45_is_the_identity_on_any_bytes(data):
    text = b45encode(data)
    assert set(text) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    assert b45decode(text) == data


@pytest.fixture(scope="module")
def signer_and_trust(tmp_path_factory):
    keys = KeyStore(tmp_path_factory.mktemp("keys"))
    keys.create()
    return Signer(keys.signing_key()), TrustList.from_der(k.der for k in keys.public_keys())


_cbor_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@examples(150)
@given(payload=st.dictionaries(st.text(max_size=8), _cbor_json, max_size=6))
def test_any_signed_payload_verifies_and_decodes_to_itself(signer_and_trust, payload):
    signer, trust = signer_and_trust
    issued_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    verdict = verify(signer.sign(payload, issued_at, expiry(issued_at)), trust)
    assert verdict.outcomes["signature"] and verdict.outcomes["expiry"], verdict.reason
    assert verdict.payload == json.loads(json.dumps(payload))  # tuples and lists alike
    assert (verdict.issuer, verdict.issued_at, verdict.expires_at) == (
        "VN", int(issued_at.timestamp()), int(expiry(issued_at).timestamp()))


_letters = ("AĂÂBCDĐEÊGHIKLMNOÔƠPQRSTUƯVXYaăâbcdđeêghiklmnoôơpqrstuưvxy"
            "áàảãạấầẩẫậéèẻẽẹíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựýỳỷỹỵ")


@st.composite
def histories(draw) -> list[HistoryDose]:
    days = draw(st.lists(st.integers(0, 600), min_size=1, max_size=4))
    start = dt.datetime(2021, 3, 1, 2, tzinfo=dt.timezone.utc)
    return [HistoryDose(f"S-{i}", f"R-{i}", draw(st.sampled_from(VACCINE_PRODUCTS)), "L1", i + 1,
                        start + dt.timedelta(days=day)) for i, day in enumerate(days)]


@examples(80)
@given(name=st.lists(st.text(_letters, min_size=1, max_size=10), min_size=1, max_size=4).map(" ".join),
       birth=st.dates(EARLIEST_BIRTH, dt.date(2020, 12, 31)), history=histories())
def test_a_certificate_of_any_history_verifies_and_states_its_payload(signer_and_trust, name, birth, history):
    signer, trust = signer_and_trust
    issued_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    dcc = statement(name, birth, history).dcc(new_uvci())
    verdict = verify(signer.sign(dcc, issued_at, expiry(issued_at)), trust)
    assert verdict.valid, verdict.reason
    assert verdict.payload == dcc
