"""The hot path's write to a shard: one script on the shard's master, then, when the master has replicas, a WAIT.

A 202 (and a back-entry acknowledgement) follows `write`: the script ran on the shard's master and, unless no
replica is asked for, at least `required` replicas have it. `required` is the `redis_min_replicas` setting, or
(-1, the default) 1 when the master has a replica and 0 when it has none, read from its INFO replication when
this process first writes to it and again every REPLICAS_REREAD seconds: a standalone Redis waits for nothing,
as before; a replica promoted by a failover acknowledges alone until a replica is attached to it, then waits
for it (the explicit setting 1 refuses instead: 503 while the master has no replica). Fewer replicas within
`redis_wait_timeout` raise NotReplicated, a RedisError (ingest answers 503 with Retry-After): the entry is in
the stream and will be persisted all the same; the client's retry is deduplicated by the records' keys.

On a Redis Cluster (`ClusterWriter`) each master gets its own pipelined connection (vaxline/redispipe.py); the
shard's master is the one redis-py's slot map names (every key of a script shares the shard's hash tag, so
one slot). MOVED is followed at once (and remembered for the slot until the map is refreshed), ASK with
ASKING; a connection error or timeout (a master down, failing over) asks redis-py for a fresh slot map and
fails the write, which the caller answers 503: the client comes back after the failover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError, TryAgainError

from .config import Settings
from .redispipe import RedisPipe

log = logging.getLogger(__name__)

REDIRECTIONS = 3  # MOVED/ASK followed per write before it fails (a slot moving twice meanwhile)
REFRESH_INTERVAL = 1.0  # seconds between two slot-map refreshes asked for by failed writes
REPLICAS_REREAD = 10.0  # seconds a master's replica count (INFO replication) is taken as known


class NotReplicated(RedisError):
    """The write is on the master, but fewer replicas than required confirmed it within the timeout."""


class Replicas:
    """How many replicas a write to each master must reach (per master address: a failover changes it)."""

    def __init__(self, settings: Settings, *, clock=time.monotonic):
        self._setting = settings.redis_min_replicas
        self._wait_timeout = settings.redis_wait_timeout
        self._clock = clock
        self._required: dict[str, tuple[int, float]] = {}  # address -> (replicas required, read at)

    def none_required(self, address: str) -> bool:
        """Known to need no replica (the setting says 0, or the master had none when last asked)."""
        if self._setting >= 0:
            return self._setting == 0
        known = self._required.get(address)
        return known is not None and known[0] == 0 and self._clock() - known[1] < REPLICAS_REREAD

    async def required(self, address: str, pipe: RedisPipe) -> int:
        if self._setting >= 0:
            return self._setting
        known = self._required.get(address)
        if known is None or self._clock() - known[1] >= REPLICAS_REREAD:
            replicas = _info_field(await pipe.call(b"INFO", b"replication"), b"connected_slaves")
            required = 1 if replicas > 0 else 0
            if known is None or known[0] != required:
                log.info("Redis %s has %d replica(s): acknowledgements wait for %d", address or "(standalone)",
                         replicas, required)
            known = self._required[address] = (required, self._clock())
        return known[0]

    async def write(self, address: str, pipe: RedisPipe, script: str, keys: list, args: list, *,
                    asking: bool = False) -> object:
        """Run the script on `pipe`, then WAIT for the replicas required; NotReplicated when fewer confirm."""
        if self.none_required(address):
            return await pipe.evalsha(script, keys, args, asking=asking)
        required = await self.required(address, pipe)
        if required == 0:
            return await pipe.evalsha(script, keys, args, asking=asking)
        reply, acked = await pipe.evalsha_waited(script, keys, args, replicas=required,
                                                 wait_timeout=self._wait_timeout, asking=asking)
        if acked < required:
            raise NotReplicated(f"{acked} of {required} replica(s) confirmed the write within"
                                f" {self._wait_timeout:g} s")
        return reply


def _info_field(info: bytes | str, name: bytes) -> int:
    text = info if isinstance(info, bytes) else info.encode()
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key == name:
            return int(value)
    return 0


class ClusterWriter:
    """Scripts sent to the master of their keys' slot, each master over its own pipelined connection."""

    def __init__(self, cluster: RedisCluster, settings: Settings):
        self._cluster = cluster
        self._url = urlsplit(settings.redis_url)
        self._replicas = Replicas(settings)
        self._pipes: dict[str, RedisPipe] = {}
        self._moved: dict[int, str] = {}  # slot -> address, from MOVED, until the slot map is refreshed
        self._refreshed_at = 0.0
        self._refreshing: asyncio.Task | None = None
        self._slots: dict[str, int] = {}  # a shard's key -> its slot (CRC16 in Python costs ~10 us a key)
        self._initialized = False

    async def run(self, script: str, keys: list, args: list) -> object:
        if not self._initialized:
            await self._cluster.initialize()  # the slot map, once; later refreshes are asked for below
            self._initialized = True
        slot = self._slots.get(keys[0])
        if slot is None:
            slot = self._slots[keys[0]] = self._cluster.keyslot(keys[0])
        address, asking = self._moved.get(slot) or self._master(slot), False
        for _ in range(REDIRECTIONS):
            try:
                return await self._replicas.write(address, self._pipe(address), script, keys, args, asking=asking)
            except (ConnectionError, TimeoutError):
                self._refresh()
                raise
            except ResponseError as e:
                kind, _, rest = str(e).partition(" ")
                if kind not in ("MOVED", "ASK"):
                    raise
                address, asking = rest.split()[-1], kind == "ASK"
                (log.debug if asking else log.info)("slot %d: %s to %s", slot, kind, address)
                if kind == "MOVED":
                    self._moved[slot] = address
                    self._refresh()
        raise TryAgainError(f"slot {slot} kept moving ({REDIRECTIONS} redirections)")

    def _master(self, slot: int) -> str:
        node = self._cluster.nodes_manager.get_node_from_slot(slot)
        return f"{node.host}:{node.port}"

    def _pipe(self, address: str) -> RedisPipe:
        pipe = self._pipes.get(address)
        if pipe is None:
            netloc = self._url.netloc.rpartition("@")
            userinfo = netloc[0] + "@" if netloc[1] else ""
            url = urlunsplit(self._url._replace(netloc=userinfo + address, path=""))
            pipe = self._pipes[address] = RedisPipe(url)
        return pipe

    def _refresh(self) -> None:
        """Ask redis-py for a fresh slot map (a failover, a resharding), at most once per REFRESH_INTERVAL."""
        now = time.monotonic()
        if (self._refreshing and not self._refreshing.done()) or now - self._refreshed_at < REFRESH_INTERVAL:
            return
        self._refreshed_at = now
        self._refreshing = asyncio.create_task(self._refreshed())

    async def _refreshed(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
            self._moved.clear()
        except Exception as e:  # noqa: BLE001 (no node answers yet): the next failed write asks again
            log.warning("refreshing the Redis Cluster slot map failed: %s", type(e).__name__)

    async def close(self) -> None:
        if self._refreshing:
            self._refreshing.cancel()
        for pipe in self._pipes.values():
            await pipe.close()
