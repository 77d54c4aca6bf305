"""A Redis Cluster on loopback, for the tests and `benchmarks/e2e.py --redis-cluster`.

Debian's redis-server (`/usr/bin/redis-server`, 7.0; scripts/setup.sh installs it), `masters` masters with
`replicas` replicas each, every node with `appendonly yes` and `appendfsync always` (as vaxline's embedded
Redis), joined by `redis-cli --cluster create --cluster-replicas N`, which gives the masters equal slot
ranges in order (what vaxline.config.shard_tag spreads the shards over). `cluster-node-timeout` is short
(2 s by default) so that a master killed fails over to its replica within seconds;
`cluster-require-full-coverage no` keeps the other masters serving meanwhile. Ports are free ones (each
node's port and its bus port, +10000); the data, configs and logs are under `folder`. With `tls` (a CA, and a
certificate and key for 127.0.0.1 that it signed), every node speaks TLS only, between nodes too, and
`url` is a rediss:// one naming the CA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.crc import key_slot

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


class ClusterError(RuntimeError):
    pass


def available() -> str | None:
    """Why a cluster cannot be started here (no redis-server or redis-cli), or None."""
    for binary in (REDIS_SERVER, REDIS_CLI):
        if not (os.access(binary, os.X_OK) or shutil.which(Path(binary).name)):
            return f"{binary} is missing (scripts/setup.sh installs Debian's redis-server as root)"
    return None


def _binary(path: str) -> str:
    return path if os.access(path, os.X_OK) else shutil.which(Path(path).name) or path


@dataclasses.dataclass(frozen=True)
class Tls:
    ca: Path
    certificate: Path
    key: Path


@dataclasses.dataclass
class Node:
    port: int
    folder: Path
    process: subprocess.Popen | None = None
    tls: Tls | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 5.0) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout,
                           **tls)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    def __init__(self, folder: Path, *, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000,
                 tls: Tls | None = None):
        self.folder = folder.resolve()
        self.masters, self.replicas, self.node_timeout_ms = masters, replicas, node_timeout_ms
        self.tls = tls
        self.nodes: list[Node] = []

    @property
    def url(self) -> str:
        """Any node names the cluster: the first one."""
        if self.tls:
            return f"rediss://{self.nodes[0].address}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{self.nodes[0].address}/0"

    def start(self, timeout: float = 60.0) -> LocalCluster:
        if why := available():
            raise ClusterError(why)
        self.folder.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(self.masters * (1 + self.replicas))
        self.nodes = [Node(port, self.folder / f"node-{port}", tls=self.tls) for port in ports]
        try:
            for node in self.nodes:
                self._launch(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                _until(lambda n=node: _answers(n), deadline, f"node {node.address} to answer")
            tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
            subprocess.run([_binary(REDIS_CLI), *tls, "--cluster", "create", *(n.address for n in self.nodes),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=timeout)
            _until(self.healthy, deadline, "the cluster to be ok with every replica in sync")
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, node: Node) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        listen = ["--port", str(node.port)] if not self.tls else [
            "--port", "0", "--tls-port", str(node.port), "--tls-cluster", "yes", "--tls-replication", "yes",
            "--tls-cert-file", str(self.tls.certificate), "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        args = [_binary(REDIS_SERVER), *listen, "--bind", "127.0.0.1", "--dir", str(node.folder),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
                "--cluster-replica-validity-factor", "0", "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--daemonize", "no", "--logfile", str(node.folder / "redis-server.out")]
        node.process = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def topology(self) -> dict[str, list[str]]:
        """master address -> its replicas' addresses, as a live node sees them (CLUSTER NODES)."""
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.suppress(redis.RedisError), node.client() as client:
                nodes = client.execute_command("CLUSTER NODES")  # redis-py parses it: address -> fields
                ids = {fields["node_id"]: address.split("@")[0] for address, fields in nodes.items()}
                masters = {fields["node_id"]: [] for fields in nodes.values()
                           if "master" in fields["flags"] and "fail" not in fields["flags"] and fields["slots"]}
                for fields in nodes.values():
                    if "slave" in fields["flags"] and "fail" not in fields["flags"] and fields["master_id"] in masters:
                        masters[fields["master_id"]].append(ids[fields["node_id"]])
                return {ids[m]: sorted(r) for m, r in masters.items()}
        raise ClusterError("no node of the cluster answers")

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok, and there are `masters` masters with their replicas linked."""
        try:
            for node in self.nodes:
                if node.alive():
                    with node.client() as client:
                        if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                            return False
            topology = self.topology()
            if len(topology) != self.masters or any(len(r) < self.replicas for r in topology.values()):
                return False
            for replicas in topology.values():
                for address in replicas:
                    with self.node(address).client() as client:
                        if client.info("replication").get("master_link_status") != "up":
                            return False
            return True
        except (redis.RedisError, ClusterError):
            return False

    def node(self, address: str) -> Node:
        [node] = [n for n in self.nodes if n.address == address]
        return node

    def master_of(self, key: str) -> Node:
        """The node serving `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if node.alive():
                with contextlib.suppress(redis.RedisError), node.client() as client:
                    for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                        if start <= slot <= end:
                            host, port = master[0], master[1]
                            return self.node(f"{host.decode() if isinstance(host, bytes) else host}:{port}")
        raise ClusterError("no node of the cluster answers")

    def kill(self, node: Node) -> None:
        """SIGKILL, as a crash would."""
        if node.alive():
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()

    def restart(self, node: Node) -> None:
        """Start a killed node again on its data (it rejoins, as a replica if it lost its slots meanwhile)."""
        self._launch(node)

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.process.terminate()  # redis-server fsyncs its AOF on SIGTERM
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(node: Node) -> bool:
    if not node.alive():
        raise ClusterError(f"redis-server on port {node.port} exited; see {node.folder}/redis-server.out")
    try:
        with node.client(timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _until(predicate, deadline: float, what: str) -> None:
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}")
        time.sleep(0.05)


BUS_OFFSET = 10000  # a node's cluster bus port, from its port


def _free_ports(count: int) -> list[int]:
    """Ports free now whose cluster bus port (+BUS_OFFSET) is free too, both below the kernel's ephemeral range:
    a client's connection takes its local port from that range, and one did take a bus port between this check
    and the node's start. Below an unusually low range there is no room, and 10000-55000 is drawn from (a
    race with listeners of other programs remains either way)."""
    ports: list[int] = []
    rng = random.Random()
    below = _ephemeral_start() - BUS_OFFSET
    high = below if below > 10000 + 2 * count else 55000
    while len(ports) < count:
        port = rng.randrange(10000, high)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _ephemeral_start(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port of the kernel's ephemeral range (Linux's default, 32768, where it cannot be read)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
