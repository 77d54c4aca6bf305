"""vaxline on a real Redis Cluster (tests/redis_cluster.py: 3 masters, 3 replicas of Debian's redis-server,
append-only, fsync always), and acknowledgements that wait for a replica.

Covers: the shards' hash tags spread them over the masters, and a standalone deployment's keys under the old
tags are renamed with their groups and pending entries; any node's URL gives a cluster client, and rediss://
reaches a TLS-only cluster; a shard's slot migrated by hand while ingest writes (ASK while its keys move,
MOVED after) is followed without a restart; the requests in flight share one WAIT; the default replica count follows the
master's replicas (a pure unit); the ingest contract on the cluster (202 then
persisted with its receipt and history, per-item rejections, a batch of only rejections not enqueued, an
idempotent retry); the crash tests on the cluster (a worker process SIGKILLed three times mid-drain, a
certifier SIGKILLed three times: every certificate issued exactly once, a poison entry dead-lettered); a
master SIGKILLed while a client posts batches without pause and records every 202: its replica takes over,
ingest and a worker process carry on without a restart, every 202'd dose is in Postgres exactly once, and
`vaxline reconcile` run as a user would (the CLI in a subprocess) shows 0 unexplained; a WAIT that cannot
be satisfied (more replicas asked for than exist, a replica stopped with SIGSTOP, a standalone Redis told to
wait for one) answers 503 with Retry-After, and its entry is persisted all the same. The stream mechanics
(own pending list, XAUTOCLAIM, trim) run on the cluster too, in tests/test_streams.py.
"""

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from tests import test_api, test_crash
from tests.conftest import ROOT, reaped, spawn, wait_until
from tests.factory import batch
from tests.stack import running_stack
from vaxline.redispipe import RedisPipe
from vaxline.shardwrite import REPLICAS_REREAD, Replicas
from vaxline.streams import ClusterNotDetected, check_shard_count, connect_redis, ensure_groups, is_cluster


def test_the_shards_spread_over_the_masters(redis_cluster, cluster_make_settings):
    for shards in (3, 4, 6):
        settings = cluster_make_settings(shards=shards)
        masters = [redis_cluster.master_of(settings.stream(shard)).address for shard in range(shards)]
        assert len(set(masters[:3])) == 3, (shards, masters)  # shards 0-2 on three different masters
        assert len(set(masters)) == 3
        for shard in range(shards):  # every key of a shard in one slot: one script, one MULTI
            keys = [settings.stream(shard), settings.accepted_key(shard), settings.replayed_key(shard)]
            assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_a_standalone_deployment_keeps_its_entries_under_the_new_tags(make_settings, redis):
    """Keys written under the plain "{<shard>}" tag of before are renamed once, groups and pending lists too."""
    settings = make_settings(shards=2)
    legacy = f"{settings.stream_prefix}:doses:{{1}}"
    await redis.set(f"{settings.stream_prefix}:shards", 2)
    entry_id = (await redis.xadd(legacy, {b"b": b"x"})).decode()
    await redis.xgroup_create(legacy, settings.group, id="0")
    await redis.xreadgroup(settings.group, "w-0", {legacy: ">"})  # pending for w-0
    await redis.hset(f"{settings.stream_prefix}:accepted:{{1}}", "7:2021-08-14", 3)
    await ensure_groups(redis, settings)
    assert not await redis.exists(legacy) and settings.stream(1) != legacy
    assert (await redis.xpending(settings.stream(1), settings.group))["pending"] == 1
    assert [e[0].decode() for e in await redis.xrange(settings.stream(1))] == [entry_id]
    assert await redis.hget(settings.accepted_key(1), "7:2021-08-14") == b"3"


async def test_the_requests_in_flight_share_their_wait(redis_cluster):
    """200 writes at once to a master with a replica: each confirmed by its replica, with far fewer WAITs."""
    master = redis_cluster.master_of("{shared-wait}").address
    pipe = RedisPipe(f"redis://{master}/0")
    with redis_cluster.node(master).client() as client:
        client.config_resetstat()
        try:
            replies = await asyncio.gather(*(pipe.evalsha_waited(
                "return redis.call('INCR', KEYS[1])", ["{shared-wait}"], [], replicas=1, wait_timeout=2)
                for _ in range(200)))
        finally:
            await pipe.close()
        waits = client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    assert sorted(reply for reply, _ in replies)[-1] == 200 and all(acked == 1 for _, acked in replies)
    assert 1 <= waits < 100, waits


async def test_a_standalone_client_on_a_cluster_node_stops_rather_than_loops(redis_cluster, cluster_settings):
    """A process that could not reach the cluster at start took it for a standalone Redis: the shard count check
    (every process's first step) says so and stops it, where MOVED errors would be retried for ever."""
    client = aioredis.Redis.from_url(redis_cluster.url)
    try:
        with pytest.raises(ClusterNotDetected, match="restart the process"):
            await check_shard_count(client, cluster_settings)
    finally:
        await client.aclose()


async def test_the_client_is_a_cluster_client_detected_from_any_node(redis_cluster, cluster_settings):
    for node in redis_cluster.nodes:
        client = connect_redis(dataclasses.replace(cluster_settings, redis_url=f"redis://{node.address}/0"))
        try:
            assert is_cluster(client) and await client.ping()
        finally:
            await client.aclose()


async def test_a_batch_is_accepted_and_persisted_on_the_cluster(cluster_settings, db):
    await test_api.test_accepted_batch_is_persisted_with_receipt_and_history(cluster_settings, db)


async def test_a_mixed_batch_accepts_its_valid_items_on_the_cluster(cluster_settings, db):
    await test_api.test_a_mixed_batch_accepts_the_valid_items(cluster_settings, db)


async def test_only_rejections_are_not_enqueued_on_the_cluster(cluster_settings, cluster_redis):
    await test_api.test_a_batch_of_only_rejected_items_is_not_enqueued(cluster_settings, cluster_redis)


async def test_rediss_reaches_a_tls_cluster(tls_cluster, make_settings, db):
    """rediss:// naming any node of a TLS-only cluster: detected as a cluster, ingest's pipelined writes and the
    workers' reads over TLS, a batch accepted and persisted."""
    settings = make_settings(redis_url=tls_cluster.url)
    assert settings.redis_url.startswith("rediss://")
    client = connect_redis(settings)
    try:
        assert is_cluster(client) and await client.ping()
    finally:
        await client.aclose()
    await test_api.test_accepted_batch_is_persisted_with_receipt_and_history(settings, db)


async def test_a_retried_batch_is_stored_once_on_the_cluster(cluster_settings, db):
    async with running_stack(cluster_settings) as stack:
        _, token = await stack.site()
        first, again = [await (await stack.post(token, batch(0, 50))).json() for _ in range(2)]
        receipts = [await wait_until(lambda b=b: test_api.persisted(stack, token, b["batch_id"]),
                                     message="receipt") for b in (first, again)]
    assert [(r["inserted"], r["duplicates"]) for r in receipts] == [(50, 0), (0, 50)]
    assert await db.fetchval("SELECT count(*) FROM doses") == 50


async def test_workers_killed_mid_drain_lose_nothing_on_the_cluster(cluster_make_settings, db, cluster_redis):
    await test_crash.test_workers_killed_three_times_mid_drain_lose_nothing(cluster_make_settings, db, cluster_redis)


async def test_a_certifier_killed_issues_each_certificate_once_on_the_cluster(cluster_make_settings, db,
                                                                               cluster_redis):
    await test_crash.test_certifier_killed_three_times_issues_each_certificate_exactly_once(
        cluster_make_settings, db, cluster_redis)


async def test_a_poison_entry_is_dead_lettered_on_the_cluster(cluster_make_settings, db, cluster_redis):
    await test_crash.test_a_poison_entry_is_dead_lettered_and_does_not_block_the_rest(
        cluster_make_settings, db, cluster_redis)


async def test_more_replicas_than_exist_answer_503_and_the_entry_persists(cluster_make_settings, db):
    settings = cluster_make_settings(redis_min_replicas=2, redis_wait_timeout=0.2)
    async with running_stack(settings) as stack:
        _, token = await stack.site()
        response = await stack.post(token, batch(0, 5))
        assert response.status == 503 and 1 <= int(response.headers["Retry-After"]) <= 30
        # Not acknowledged, but in the stream: persisted all the same (the client's retry would be duplicates).
        await wait_until(lambda: db.fetchval("SELECT count(*) = 5 FROM doses"), message="the entry persisted")


async def test_a_stopped_replica_makes_the_wait_time_out_with_503(redis_cluster, cluster_make_settings):
    settings = cluster_make_settings(redis_wait_timeout=0.3)  # min replicas: auto, 1 (every master has one)
    async with running_stack(settings, workers=0) as stack:
        site_id, token = await stack.site()
        assert (await stack.post(token, batch(0, 5))).status == 202
        master = redis_cluster.master_of(settings.stream(settings.shard_of(site_id))).address
        [replica] = redis_cluster.topology()[master]
        process = redis_cluster.node(replica).process
        process.send_signal(signal.SIGSTOP)
        try:
            response = await stack.post(token, batch(5, 5))
        finally:
            process.send_signal(signal.SIGCONT)
        assert response.status == 503 and "Retry-After" in response.headers
        assert (await stack.post(token, batch(5, 5))).status == 202  # the replica is back: the retry goes in


async def test_auto_waits_for_a_replica_once_the_master_has_one(settings):
    """The default (-1): a master's replicas read at its first write, and again REPLICAS_REREAD s later."""
    class Master:  # answers INFO replication only: the rule under test is pure
        replicas = 0

        async def call(self, *args):
            assert args == (b"INFO", b"replication")
            return b"# Replication\r\nrole:master\r\nconnected_slaves:%d\r\n" % self.replicas

    now, master = [0.0], Master()
    replicas = Replicas(settings, clock=lambda: now[0])
    assert not replicas.none_required("m") and await replicas.required("m", master) == 0
    assert replicas.none_required("m")
    master.replicas = 1  # a replica attached (the old master back after a failover)
    now[0] = REPLICAS_REREAD - 0.1
    assert await replicas.required("m", master) == 0
    now[0] = REPLICAS_REREAD
    assert not replicas.none_required("m") and await replicas.required("m", master) == 1
    explicit = Replicas(dataclasses.replace(settings, redis_min_replicas=1))
    assert await explicit.required("m", Master()) == 1  # refuses (503) while the master has none


async def test_standalone_redis_told_to_wait_for_a_replica_answers_503(make_settings):
    settings = make_settings(redis_min_replicas=1, redis_wait_timeout=0.1)  # the embedded Redis has none
    async with running_stack(settings, workers=0) as stack:
        _, token = await stack.site()
        response = await stack.post(token, batch(0, 2))
        assert response.status == 503 and "Retry-After" in response.headers


async def test_a_shards_slot_migrated_while_ingest_writes_is_followed(redis_cluster, cluster_make_settings, db,
                                                                       caplog):
    """The slot of site 1's shard moved to another master by hand, as `redis-cli --cluster reshard` does: while
    importing (the keys already moved: ASK) and after (MOVED), ingest's writes follow without a restart, the
    worker reads on, and every batch is persisted; the slot is moved back after."""
    caplog.set_level(logging.DEBUG, logger="vaxline.shardwrite")  # an ASK is logged at debug
    settings = cluster_make_settings()
    async with running_stack(settings) as stack:
        site_id, token = await stack.site()
        shard = settings.shard_of(site_id)
        keys = [settings.stream(shard), settings.accepted_key(shard), f"{settings.stream_prefix}:added:"
                f"{settings.shard_tag(shard)}"]
        slot = key_slot(keys[0].encode())
        source = redis_cluster.master_of(keys[0])
        target = next(redis_cluster.node(a) for a in redis_cluster.topology() if a != source.address)
        assert (await stack.post(token, batch(0, 5))).status == 202
        migrate_slot(slot, source, target, redis_cluster, finish=False)  # keys moved, slot still the source's
        asked = await stack.post(token, batch(5, 5))
        assert asked.status == 202, await asked.text()
        assert f"slot {slot}: ASK to {target.address}" in caplog.text  # ingest's own write followed it
        migrate_slot(slot, source, target, redis_cluster, finish=True)
        assert redis_cluster.master_of(keys[0]) == target
        moved = await stack.post(token, batch(10, 5))
        assert moved.status == 202, await moved.text()
        assert f"slot {slot}: MOVED to {target.address}" in caplog.text
        await wait_until(lambda: db.fetchval("SELECT count(*) = 15 FROM doses"), message="every batch persisted")
        for finish in (False, True):  # back, for the tests after this one
            migrate_slot(slot, target, source, redis_cluster, finish=finish)
        assert (await stack.post(token, batch(15, 5))).status == 202
        await wait_until(lambda: db.fetchval("SELECT count(*) = 20 FROM doses"), message="and after moving back")


def migrate_slot(slot: int, source, target, cluster, *, finish: bool) -> None:
    """CLUSTER SETSLOT IMPORTING/MIGRATING and MIGRATE of the slot's keys; with `finish`, SETSLOT NODE everywhere."""
    with source.client() as src, target.client() as dst:
        source_id, target_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        if not finish:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        if finish:
            for address in cluster.topology():
                with cluster.node(address).client() as master:
                    master.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)


async def test_a_master_killed_mid_stream_fails_over_and_loses_nothing(redis_cluster, cluster_make_settings, db):
    """Four sites (one per shard) post 20-dose batches without pause, retrying each until its 202; the master
    of site 1's shard is SIGKILLed after 40 acknowledgements; posting goes on until 40 more came after its
    replica took over. Then every acknowledged batch is in Postgres, every dose once, and reconcile is clean."""
    settings = cluster_make_settings(claim_idle_ms=1000, redis_wait_timeout=0.5)
    acked: list[tuple[str, list[tuple[int, str]]]] = []  # (batch id, its (site, record id)s) of every 202
    refused = 0
    acked_at: list[tuple[float, float]] = []  # (the successful attempt sent, answered)
    async with running_stack(settings, workers=0) as stack:
        sites = [await stack.site(f"FO-{n}") for n in range(settings.shards)]
        victim = redis_cluster.master_of(settings.stream(settings.shard_of(sites[1][0])))
        worker = spawn("workers", settings, "--consumer", "failover-0")
        with reaped([worker]):
            stop = asyncio.Event()

            async def post(site: int, site_id: int, token: str):
                nonlocal refused
                n = site * 200_000  # each site its own persons
                while not stop.is_set():
                    body = batch(n, 20)
                    while True:  # the same batch until it is acknowledged, as a desk does
                        sent_at = time.monotonic()
                        response = await stack.post(token, body)
                        if response.status == 202:
                            acked.append(((await response.json())["batch_id"],
                                          [(site_id, d["record_id"]) for d in body["doses"]]))
                            acked_at.append((sent_at, time.monotonic()))
                            break
                        assert response.status == 503 and "Retry-After" in response.headers
                        refused += 1
                        await asyncio.sleep(0.1)  # sooner than Retry-After: the test has a deadline
                    n += 20

            posting = [asyncio.create_task(post(i, site_id, token)) for i, (site_id, token) in enumerate(sites)]
            await wait_until(lambda: len(acked) >= 40, timeout=60, message="40 batches before the kill")
            redis_cluster.kill(victim)
            killed_at, before = time.monotonic(), len(acked)
            await wait_until(lambda: victim.address not in redis_cluster.topology(), timeout=30,
                             message="the replica promoted")
            await wait_until(lambda: len(acked) >= before + 40 and any(
                b.startswith(f"{settings.shard_of(sites[1][0])}-") for b, _ in acked[before:]),
                timeout=60, message="40 more batches, the failed-over shard's among them")
            stop.set()
            await asyncio.gather(*posting)
            await wait_until(lambda: persisted_all(db, acked), timeout=90, message="every 202 persisted")
            assert worker.poll() is None  # the same worker process throughout
        victim_shard = f"{settings.shard_of(sites[1][0])}-"
        failover_seconds = min(at for (b, _), (sent, at) in zip(acked, acked_at) if sent > killed_at
                               and b.startswith(victim_shard)) - killed_at
    records = {record for _, records in acked for record in records}
    rows = await db.fetch("SELECT site_id, record_id FROM doses")
    assert len(rows) == len(records)  # none doubled (nor any not acknowledged)
    assert {(r["site_id"], r["record_id"]) for r in rows} == records  # none lost
    last: list = []

    async def reconciled() -> bool:  # exact at rest: the worker may still be acknowledging the last group
        last[:] = await reconcile_cli(settings)
        return last[0] == 0 and last[1]["unexplained"] == 0

    await wait_until(reconciled, timeout=30, interval=0.5, message="reconcile: 0 unexplained")
    report = last[1]
    assert report["totals"]["received"] >= len(records)
    print(f"failover: {refused} refusals, {len(acked)} batches acknowledged; the killed master's shard acknowledged"
          f" again {failover_seconds:.1f} s after the kill")
    redis_cluster.restart(victim)  # it rejoins as its successor's replica: the cluster whole for later tests
    await wait_until(redis_cluster.healthy, timeout=60, message="the cluster whole again")


async def persisted_all(db, acked) -> bool:
    ids = [batch_id for batch_id, _ in acked]
    return await db.fetchval("SELECT count(*) FROM batches WHERE batch_id = ANY($1)", ids) == len(ids)


async def reconcile_cli(settings) -> tuple[int, dict]:
    """`vaxline reconcile --json` in a subprocess, with the deployment's environment (REDIS_URL, DATABASE_URL):
    (its exit status, its report)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "commands", "reconcile", "--json", cwd=ROOT, env={**os.environ, **settings.to_env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert out, err.decode()[-2000:]
    return process.returncode, json.loads(out)


def test_cluster_ports_and_their_bus_ports_stay_below_the_ephemeral_range():
    # A client's connection takes its local port from the ephemeral range: a bus port there was once taken
    # between the check and the node's start (CI: "bind: Address already in use").
    from deploy import rediscluster

    start = rediscluster._ephemeral_start()
    if start - rediscluster.BUS_OFFSET <= 10000 + 24:
        pytest.skip(f"an ephemeral range from {start} leaves no room below it")
    ports = rediscluster._free_ports(12)
    assert len(set(ports)) == 12
    assert all(10000 <= port and port + rediscluster.BUS_OFFSET < start for port in ports), (start, ports)
