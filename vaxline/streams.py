"""What ingest and workers both need to know about the stream shards.

The backlog is what backpressure, the status line and metrics read. Streams
are trimmed only below what every group still needs (see workers.trim), so a
shard's length is its unfinished work plus at most one trim interval of
acknowledged entries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from .config import Settings
from .entries import batch_id, doses_by_day, entry_of

log = logging.getLogger(__name__)

# What a process waits out and retries, never dies of: Redis unreachable, loading, failing over (CLUSTERDOWN,
# TRYAGAIN, MOVED before the slot map is refreshed are ResponseErrors, hence RedisErrors), and a cluster with
# no node reachable or a slot not covered (redis-py's RedisClusterException is no RedisError).
REDIS_TRANSIENT = (RedisError, RedisClusterException)


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    entries_per_shard: tuple[int, ...]  # XLEN: entries not yet trimmed
    redis_memory_bytes: int
    added_per_shard: tuple[int, ...]  # entries ever added (vaxline.enqueue counts each XADD): with the
    # lengths, what was trimmed between two readings, which Redis 6.2 does not report (7.0's entries-added)


def added_key(settings: Settings, shard: int) -> str:
    """The count of entries ever added to a shard (hash-tagged with it: one MULTI in a Redis Cluster)."""
    return f"{settings.stream_prefix}:added:{settings.shard_tag(shard)}"


def is_cluster(redis: aioredis.Redis | RedisCluster) -> bool:
    return isinstance(redis, RedisCluster)


async def read_backlog(redis: aioredis.Redis, settings: Settings) -> Backlog:
    """Every shard's length and added count; the memory of the fullest Redis (a cluster's masters each hold
    their shards: the bound protects each)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard, stream in enumerate(settings.streams):
            pipe.xlen(stream)
            pipe.get(added_key(settings, shard))
        if not is_cluster(redis):
            pipe.info("memory")
        replies = await pipe.execute()
    if is_cluster(redis):
        per_node = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        infos = [per_node] if "used_memory" in per_node else per_node.values()  # one master: its reply alone
        memory = max(int(info["used_memory"]) for info in infos)
        per_shard = replies
    else:
        *per_shard, info = replies
        memory = int(info["used_memory"])
    return Backlog(tuple(per_shard[0::2]), memory, tuple(int(n or 0) for n in per_shard[1::2]))


@dataclasses.dataclass(frozen=True, slots=True)
class ShardState:
    length: int  # entries not yet trimmed
    pending: int  # delivered to the persist group, not acknowledged
    reported_lag: int | None  # undelivered entries, as Redis 7 reports them; None on 6.2
    trim_floor: str | None  # the lowest entry id any group still needs; None: trim nothing

    @property
    def lag(self) -> int:
        """Entries not yet delivered. Redis 6.2 does not report it; there it is estimated as
        length - pending right after a trim, an upper bound (acknowledged entries above an older
        pending one are counted too)."""
        return self.reported_lag if self.reported_lag is not None else max(0, self.length - self.pending)


async def shard_state(redis: aioredis.Redis, stream: str, group_name: str) -> ShardState:
    """One XINFO GROUPS and one XPENDING per group: what metrics and trimming both need."""
    if not await redis.exists(stream):
        return ShardState(0, 0, 0, None)
    length = await redis.xlen(stream)
    pending, lag, floor = 0, None, None
    for group in await redis.xinfo_groups(stream):
        needed = _after(as_text(group["last-delivered-id"]))
        summary = await redis.xpending(stream, group["name"])
        if summary["pending"]:
            needed = _smaller(needed, as_text(summary["min"]))
        floor = needed if floor is None else _smaller(floor, needed)
        if as_text(group["name"]) == group_name:
            pending, lag = summary["pending"], group.get("lag")
    return ShardState(length, pending, lag, floor)


async def drained(redis: aioredis.Redis, stream: str, group_name: str) -> bool:
    """Whether the group has been delivered every entry of the stream and acknowledged them all."""
    if (await redis.xpending(stream, group_name))["pending"]:
        return False
    [group] = [g for g in await redis.xinfo_groups(stream) if as_text(g["name"]) == group_name]
    newest = await redis.xrevrange(stream, count=1)
    return not newest or as_text(newest[0][0]) == as_text(group["last-delivered-id"])


async def oldest_unfinished(redis: aioredis.Redis, stream: str, group_name: str) -> int | None:
    """When (epoch ms, from its id) the oldest entry of `stream` that `group_name` has not acknowledged was
    added: its oldest pending entry or its first undelivered one, whichever is older; None when the group has
    finished every entry (or the stream or group does not exist yet)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return None
    found = [g for g in groups if as_text(g["name"]) == group_name]
    if not found:
        return None
    added: list[int] = []
    if found[0]["pending"]:  # the summary's count, from the same reply: no XPENDING when nothing is pending
        summary = await redis.xpending(stream, group_name)
        if summary["pending"]:
            added.append(_ms(as_text(summary["min"])))
    if found[0].get("lag") != 0:  # None: Redis 6.2, or entries deleted; look
        first = await redis.xrange(stream, min="(" + as_text(found[0]["last-delivered-id"]), count=1)
        if first:
            added.append(_ms(as_text(first[0][0])))
    return min(added) if added else None


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _after(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


def _smaller(a: str, b: str) -> str:
    return min(a, b, key=lambda i: tuple(int(p) for p in i.split("-")))


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ShardCountMismatch(RuntimeError):
    """This process would use another number of shards than the deployment: entries would be stranded."""


class ClusterNotDetected(RuntimeError):
    """A standalone client is talking to a cluster node (it was unreachable at start): fatal, not retried."""


async def check_shard_count(redis: aioredis.Redis, settings: Settings) -> None:
    """The first process fixes the deployment's shard count in Redis; every later one must agree."""
    key = f"{settings.stream_prefix}:shards"
    if not is_cluster(redis):
        if (await redis.info("cluster")).get("cluster_enabled"):
            raise ClusterNotDetected(
                "REDIS_URL names a Redis Cluster node, but Redis could not be reached when this process started,"
                " so it took it for a standalone Redis: restart the process")
        await adopt_legacy_keys(redis, settings)
    await redis.set(key, settings.shards, nx=True)
    recorded = int(await redis.get(key))
    if recorded != settings.shards:
        raise ShardCountMismatch(
            f"this deployment's streams use {recorded} shards ({key}); this process was configured with"
            f" {settings.shards}. Set VAXLINE_SHARDS={recorded}: changing it strands entries.")


async def adopt_legacy_keys(redis: aioredis.Redis, settings: Settings) -> None:
    """Rename a shard's keys from the plain "{<shard>}" tag of before to today's spread tag (Settings.shard_tag),
    once, on a standalone Redis (where a key's slot does not matter, and RENAME keeps a stream's groups and
    pending lists): a deployment upgraded with entries in its streams strands none. RENAMENX: a process that
    comes second, or a new key already written, leaves things as they are."""
    if not await redis.exists(f"{settings.stream_prefix}:shards"):
        return  # a new deployment: nothing was written under the old names
    for shard in range(settings.shards):
        for kind in ("doses", "accepted", "replayed", "added"):
            legacy = f"{settings.stream_prefix}:{kind}:{{{shard}}}"
            current = f"{settings.stream_prefix}:{kind}:{settings.shard_tag(shard)}"
            try:
                if await redis.renamenx(legacy, current):
                    log.warning("renamed %s to %s (the shard's hash tag spreads a Redis Cluster)", legacy, current)
            except ResponseError as e:  # no such key: already renamed, or never written
                if "no such key" not in str(e).lower():
                    raise


SAFE_EVICTION = "noeviction"  # full Redis refuses the XADD (a 503), never drops an acknowledged entry


async def eviction_risk(redis: aioredis.Redis) -> str | None:
    """Why this Redis may evict stream entries (a maxmemory-policy other than noeviction), or None.

    Any other policy lets Redis delete keys when memory runs out: an allkeys-* policy the streams
    themselves, with doses already acknowledged with a 202 (and accepted counts, and the lookup limits);
    a volatile-* policy the limiters' counters. None too when CONFIG is refused (managed Redis): nothing
    to read, and the operator's own checks apply. Raises RedisError when Redis is unreachable."""
    try:
        config = await redis.config_get("maxmemory*")
    except ResponseError:  # CONFIG disabled or renamed
        return None
    values = {as_text(k): as_text(v) for k, v in config.items()}
    policy = values.get("maxmemory-policy", SAFE_EVICTION)
    if policy == SAFE_EVICTION:
        return None
    return (f"Redis runs with maxmemory-policy {policy} (maxmemory {values.get('maxmemory', '?')}): when memory runs"
            f" out it evicts keys, streams of acknowledged doses included. Set maxmemory-policy noeviction"
            f" (CONFIG SET maxmemory-policy noeviction, and in redis.conf).")


async def ensure_groups(redis: aioredis.Redis, settings: Settings) -> None:
    """Check the shard count, then create the consumer groups (from the stream's start): the persist
    group on every shard, the certify group on the certify stream."""
    await check_shard_count(redis, settings)
    for stream, group in [(s, settings.group) for s in settings.streams] + [
            (settings.certify_stream, settings.certify_group)]:
        try:
            await redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):  # redis-py has no class for this reply
                raise


REDIS_POOL_SIZE = 256  # connections per process (per node of a cluster)
REDIS_POOL_WAIT = 2.0  # seconds a command may wait for one before it fails (ingest: a 503)
_TIMEOUTS = {"socket_timeout": 10, "socket_connect_timeout": 5}


def connect_redis(settings: Settings) -> aioredis.Redis | RedisCluster:
    """Explicit timeouts: a half-open connection must fail, not hang an XADD or XREADGROUP
    (reads block for at most a fraction of a second, well under the socket timeout).

    The pool blocks when all its connections are in use: redis-py's default pool raises at once past
    100, which turned a burst of desks posting together (each 202 waits for its XADD's fsync) into
    503s. Waiting a little is the better answer; past REDIS_POOL_WAIT the command fails as before.

    When REDIS_URL names a node of a Redis Cluster (CLUSTER INFO answers, asked once here), a RedisCluster
    client with the same timeouts (TLS too for rediss://): it finds the other nodes, follows MOVED and ASK,
    and after a failover refreshes its slot map and retries (ClusterDownError, TryAgain, connection errors)."""
    tcp = {} if settings.redis_url.startswith("unix:") else {"socket_keepalive": True}
    if cluster_mode(settings.redis_url):
        return RedisCluster.from_url(settings.redis_url, max_connections=REDIS_POOL_SIZE, health_check_interval=10,
                                     **_TIMEOUTS, **tcp)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT, health_check_interval=10,
        **_TIMEOUTS, **tcp)
    return aioredis.Redis.from_pool(pool)


def cluster_mode(url: str) -> bool:
    """Whether the Redis at `url` is a node of a Redis Cluster (INFO's cluster_enabled: CLUSTER INFO is refused
    by a standalone Redis, INFO answers everywhere). Asked at start, once, with the blocking client (the
    callers build their client synchronously). Unreachable: a standalone Redis is assumed (the default
    deployment), with a warning, since a cluster client cannot be built without a node that answers."""
    if url.startswith("unix:"):
        return False  # a Redis Cluster speaks TCP only
    try:
        with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as probe:
            return bool(probe.info("cluster").get("cluster_enabled"))
    except RedisError as e:
        log.warning("Redis unreachable at start (%s): taken to be standalone, not a cluster", type(e).__name__)
        return False


@dataclasses.dataclass
class IngestCounts:
    """Ingest's side of reconciliation, read from Redis before Postgres is: the doses it acknowledged and
    rejected per (site, day), the dose batches still in the streams (batch id -> site, doses per day), and
    the dead letters replayed (dead batch id -> the replay's batch id; vaxline.enqueue.Enqueuer.replay)."""

    accepted: dict[tuple[int, dt.date], int]
    rejected: dict[tuple[int, dt.date], int]
    in_streams: dict[str, tuple[int, dict[dt.date, int]]]
    replays: dict[str, str] = dataclasses.field(default_factory=dict)


async def read_ingest_counts(redis: aioredis.Redis, settings: Settings) -> IngestCounts:
    """The counts ingest writes with each XADD (and each refusal), and every dose batch still in a shard."""
    counts = IngestCounts(defaultdict(int), defaultdict(int), {})
    for shard in range(settings.shards):
        for field, value in (await redis.hgetall(settings.accepted_key(shard))).items():
            site, day, *kind = field.decode().split(":")
            (counts.rejected if kind else counts.accepted)[(int(site), dt.date.fromisoformat(day))] += int(value)
        # Before the entries: a replay named here is in the stream below, or persisted (trimmed) by then.
        for dead, entry_id in (await redis.hgetall(settings.replayed_key(shard))).items():
            counts.replays[dead.decode()] = batch_id(shard, entry_id.decode())
        start = "-"
        while True:
            entries = await redis.xrange(settings.stream(shard), min=start, max="+", count=1000)
            for entry_id, fields in entries:
                entry = entry_of(fields)  # None: dead-lettered by the workers, with its error
                if entry is not None and entry.doses:
                    counts.in_streams[batch_id(shard, entry_id.decode())] = (entry.site_id, doses_by_day(entry.doses))
            if len(entries) < 1000:
                break
            start = _after(entries[-1][0].decode())
    return counts
