"""The Redis Cluster the cluster tests share: 3 masters and 3 replicas of Debian's redis-server on loopback
(deploy/rediscluster.py, the same the e2e benchmark starts), append-only with fsync always, started once per
session under the session's temporary folder and stopped at its end. Without redis-server the tests that use
it are skipped, or fail with CI=1 (scripts/setup.sh installs it as root).

`tls_cluster`: 3 masters without replicas that speak TLS only (rediss://), with a CA and a certificate for
127.0.0.1 made here. tests/conftest.py imports the fixtures, so every module shares the one cluster of each.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
from pathlib import Path

import pytest

from deploy.rediscluster import LocalCluster, Tls, available
from vaxline.streams import connect_redis


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    if why := available():
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3, replicas=1, node_timeout_ms=2000)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def tls_cluster(tmp_path_factory):
    if why := available():
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("redis-tls-cluster")
    cluster = LocalCluster(folder, masters=3, replicas=0, tls=loopback_certificates(folder / "tls"))
    cluster.start()
    yield cluster
    cluster.stop()


def loopback_certificates(folder: Path) -> Tls:
    """A CA and a certificate it signed for 127.0.0.1 (PEM files, the key 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = Tls(folder / "ca.crt", folder / "node.crt", folder / "node.key")
    files.ca.write_bytes(certificate("vaxline test CA", ca_key, "vaxline test CA", ca_key, ca=True)
                         .public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(certificate("127.0.0.1", node_key, "vaxline test CA", ca_key, ca=False)
                                  .public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(node_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return files


@pytest.fixture
def cluster_make_settings(make_settings, redis_cluster):
    """make_settings, on the cluster (each test its own stream prefix, as on the embedded Redis)."""
    return functools.partial(make_settings, redis_url=redis_cluster.url)


@pytest.fixture
def cluster_settings(cluster_make_settings):
    return cluster_make_settings()


@pytest.fixture
async def cluster_redis(cluster_settings):
    """A cluster client (connect_redis detects the cluster); the test's keys deleted after it."""
    client = connect_redis(cluster_settings)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{cluster_settings.stream_prefix}:*")]
    for key in keys:
        await client.delete(key)
    await client.aclose()
