"""Settings: one typed object, built once at start-up and passed explicitly.

Every stream name, key prefix and limit lives here, so ingest and workers can
never disagree about where a batch goes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str
    redis_url: str
    # A hot standby of database_url (DATABASE_READ_URL): ingest's read-only routes (certificate lookups, person
    # reads, statistics, review lists, the revocation feed) read there; empty: the primary serves them too.
    database_read_url: str = ""

    # Streams: one key per shard, hash-tagged so a Redis Cluster spreads them.
    stream_prefix: str = "vaxline"
    shards: int = 4
    group: str = "persist"
    # A 202 waits until this many replicas of the shard's Redis master have the batch (WAIT); -1: 1 when that
    # master has a replica (INFO replication, read when ingest first writes to it), else 0 (a standalone Redis).
    # A WAIT past redis_wait_timeout seconds answers 503 (the batch is in the stream all the same).
    redis_min_replicas: int = -1
    redis_wait_timeout: float = 1.0

    # Ingest limits (the HTTP contract).
    max_batch_doses: int = 1000
    max_body_bytes: int = 1024 * 1024
    # Backpressure: 503 past either bound. Entries are batches, so the memory
    # bound is the one that protects Redis when batches are large.
    max_backlog_entries: int = 50_000
    max_redis_memory_bytes: int = 2 * 1024**3
    keepalive_timeout: float = 300.0  # longer than a desk's think time
    # A request in progress must not stall: its headers are due client_timeout seconds after the connection
    # opened or its first byte, its body client_timeout seconds after the headers plus 1 s per client_min_rate
    # bytes (ingest.deadlines). An idle keep-alive connection is not a request in progress.
    client_timeout: float = 20.0
    client_min_rate: int = 8192

    # Workers: gather up to this many doses or this long, then one transaction.
    gather_max_doses: int = 10_000
    gather_max_wait: float = 0.05
    claim_idle_ms: int = 30_000  # XAUTOCLAIM entries idle longer than the worst batch
    max_deliveries: int = 5  # past this, a failing entry is dead-lettered
    trim_interval: float = 1.0
    statement_timeout: float = 120.0  # a persist stuck longer is cut off and retried

    # Certificates: persisting workers hand the persons of each group to the certifiers through one
    # stream; a certifier signs and stores certify_max_persons at a time.
    certify_group: str = "certify"
    certify_max_persons: int = 1_000
    # As long as a worker's gather window: a round's fixed cost (its statements, its commit) is shared by the
    # persons of every handoff that came within it. Desk batches at 3,000 doses/s: Postgres 99-107 us a
    # certificate against 115-123 at 0.02 s, for at most 30 ms more on the way to a certificate
    # (docs/benchmarks.md).
    certify_max_wait: float = 0.05
    certify_nice: int = 10  # certifiers yield the CPU to persisting when both want it
    keys_dir: str = ""  # signing keys and signer certificates; default <data_dir>/keys

    # Certificate lookup by national ID and birth date: per client address, at most this many
    # per window, and every answer takes at least lookup_floor seconds (found or not alike).
    lookup_rate_limit: int = 20
    lookup_rate_window: float = 60.0
    lookup_floor: float = 0.05
    # Past lookup_guess_limit wrong birth dates for one national ID within lookup_guess_window seconds (from any
    # address), a lookup of that ID needs a one-time code sent to a phone a site recorded for the person.
    lookup_guess_limit: int = 10
    lookup_guess_window: float = 86_400.0
    # The full certificate and its QR image by UVCI need the signed link a lookup hands out, valid this long.
    certificate_link_ttl: float = 300.0
    # The server secret that signs those links and keys the national-ID hashes in Redis (hex, 32 bytes or
    # more); empty: <data_dir>/server-secret, made on first use (0600).
    server_secret: str = ""
    # Proxies whose X-Forwarded-For ingest believes (addresses or CIDRs, comma-separated); empty: none,
    # and the client is the socket's peer.
    trusted_proxies: str = ""

    # Review: reviewers take up to review_max_persons due persons per transaction, and look again
    # every review_interval seconds once none are due.
    review_max_persons: int = 2_000
    review_interval: float = 0.5
    review_nice: int = 15  # below the certifiers: certificates have an SLO, review flags do not
    # Standing aside (workers/standaside.py): before each round, a reviewer or notifier waits while the oldest
    # dose entry or certify handoff not yet finished is older than stand_aside_after seconds (the persisting
    # workers or the certifiers are behind: certificates have a deadline, flags and SMS do not), for at most
    # stand_aside_max seconds in a row, so that a sustained overload still lets a round through; 0 turns it off.
    stand_aside_after: float = 1.0
    stand_aside_max: float = 60.0

    # Citizen correction requests: a one-time code lives otp_ttl seconds, allows otp_max_attempts
    # guesses and otp_max_sends sends; at most correction_rate_limit new requests per client address
    # per hour. otp_sender names the class that sends codes ("module:Class"), or "dev" for the development
    # sender (the log and <data_dir>/otp-outbox.jsonl); empty: none, and ingest refuses to start.
    otp_ttl: float = 600.0
    otp_max_attempts: int = 5
    otp_max_sends: int = 3
    correction_rate_limit: int = 10
    otp_sender: str = ""
    # Filing is refused before its body is read past the per-address limit (or a body no room could
    # take); then, before any image is read, past correction_person_limit requests per national ID or
    # correction_phone_limit per phone on record a day, or while the request's room is full: requests
    # awaiting a code number correction_unconfirmed_max or hold correction_unconfirmed_bytes of evidence,
    # or, per province, those awaiting a check in person number correction_in_person_max or hold
    # correction_in_person_bytes. Requests about records of a national ID with none (no_record) keep no
    # evidence; past correction_no_record_max of them, they are answered alike and not stored.
    # An unconfirmed request is deleted with its evidence correction_unconfirmed_ttl seconds after filing
    # (correction_in_person_ttl when it awaits an identity check in person) by ingest's housekeeping, which
    # also re-drives approved changes the stream could not take, every correction_housekeeping_interval s.
    correction_person_limit: int = 5
    correction_phone_limit: int = 10
    correction_unconfirmed_max: int = 10_000
    correction_unconfirmed_bytes: int = 1024**3
    correction_unconfirmed_ttl: float = 3600.0
    correction_in_person_ttl: float = 14 * 86400.0
    correction_in_person_max: int = 500
    correction_in_person_bytes: int = 256 * 1024**2
    correction_no_record_max: int = 10_000
    correction_housekeeping_interval: float = 30.0

    # Notifications (vaxline.notify, workers/notify.py): an SMS with a link when a person's certificate is stored
    # or their correction request decided. notifier names the class that sends them ("module:Class"), or "dev"
    # (<data_dir>/notify-outbox.jsonl); empty: no notifier process starts, and notifications wait in Postgres.
    # public_base_url is the portal's address the links start with (e.g. https://vaxline.example.vn); empty:
    # relative links, which only the development notifier accepts. A notifier sends up to notify_batch at a
    # time, holds each for notify_lease seconds (after which another may send it again), retries a failed one
    # after notify_backoff seconds doubled per attempt up to notify_backoff_max, looks again every
    # notify_interval seconds when none is due, and forgets sent ones after notify_retention seconds.
    notifier: str = ""
    public_base_url: str = ""
    notify_batch: int = 100
    notify_lease: float = 60.0
    notify_backoff: float = 5.0
    notify_backoff_max: float = 900.0
    notify_interval: float = 1.0
    notify_retention: float = 30 * 86400.0
    notify_nice: int = 15  # as the reviewers: an SMS has no SLO, persisting and signing do

    data_dir: Path = Path(".vaxline")

    def shard_tag(self, shard: int) -> str:
        """The hash tag every key of a shard carries (one Redis Cluster slot: one script, one MULTI)."""
        return "{" + shard_tag(shard) + "}"

    def stream(self, shard: int) -> str:
        return f"{self.stream_prefix}:doses:{self.shard_tag(shard)}"

    def accepted_key(self, shard: int) -> str:
        """Doses ingest acknowledged, per "site_id:day" (the shard's hash tag: one MULTI with its XADD)."""
        return f"{self.stream_prefix}:accepted:{self.shard_tag(shard)}"

    def replayed_key(self, shard: int) -> str:
        """Dead letters replayed onto a shard: dead batch id -> the replay's entry id, written with its XADD."""
        return f"{self.stream_prefix}:replayed:{self.shard_tag(shard)}"

    @property
    def streams(self) -> list[str]:
        return [self.stream(shard) for shard in range(self.shards)]

    @property
    def certify_stream(self) -> str:
        return f"{self.stream_prefix}:certify"

    @property
    def signing_keys_dir(self) -> Path:
        return Path(self.keys_dir) if self.keys_dir else self.data_dir / "keys"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream_prefix}:dead"

    def shard_of(self, site_id: int) -> int:
        """Batches of one site always land on one shard (their order is kept)."""
        return site_id % self.shards

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        values: dict = {
            "database_url": env.get("DATABASE_URL", ""),
            "redis_url": env.get("REDIS_URL", ""),
            "database_read_url": env.get("DATABASE_READ_URL", ""),
        }
        for field in dataclasses.fields(cls):
            name = f"VAXLINE_{field.name.upper()}"
            if name in env and field.name not in _URLS:
                values[field.name] = _parse(field.type, env[name])
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a child process."""
        env = {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
               "DATABASE_READ_URL": self.database_read_url}
        for field in dataclasses.fields(self):
            if field.name not in _URLS:
                env[f"VAXLINE_{field.name.upper()}"] = str(getattr(self, field.name))
        return env


_URLS = ("database_url", "redis_url", "database_read_url")  # named without the VAXLINE_ prefix


CLUSTER_SLOTS = 16384


@functools.cache
def shard_tag(shard: int) -> str:
    """"<shard>.<k>", with the smallest k whose Redis Cluster slot (CRC16 of the tag) is near the shard's place.

    A cluster made by `redis-cli --cluster create` gives its M masters equal slot ranges in order; a cluster
    has 3 masters at least. So shard i goes to third i mod 3 of the slot space, at a quarter of it for
    i < 3, three quarters for 3 <= i < 6, then ever finer (3/8, 7/8, 1/16, ...): on 3 masters shard i is on
    master i mod 3 (shards 0-2 on three different ones, whatever their number); on 6, shards 0-5 are on six.
    The plain "{<shard>}" of old put shards 1 and 2 on one master of three (slots 9842 and 5649). The
    shard count moves no shard: more shards take further places. Pure, so every process names the same keys."""
    third = CLUSTER_SLOTS / 3
    target = (shard % 3 + _place(shard // 3)) * third
    window = third / 64
    for k in itertools.count():
        tag = f"{shard}.{k}"
        if abs(_crc16(tag.encode()) % CLUSTER_SLOTS - target) < window:
            return tag
    raise AssertionError("unreachable")


def _place(round_: int) -> float:
    """1/4, 3/4, 3/8, 7/8, 1/16, ...: the middles of ever finer halves, spread (van der Corput)."""
    if round_ < 2:
        return 0.25 + 0.5 * round_
    bits, corput, n, scale = round_.bit_length(), 0.0, round_, 0.5
    while n:
        corput += scale * (n & 1)
        n, scale = n >> 1, scale / 2
    return corput + 2.0 ** -(bits + 1)


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), Redis Cluster's key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def _parse(type_name: str, text: str):
    match type_name:
        case "int":
            return int(text)
        case "float":
            return float(text)
        case "Path":
            return Path(text)
        case _:
            return text
