"""Observability: exact metrics across processes, freshness, backlog, logs, and the shipped configs.

The workload runs through `vaxline serve --processes 2` and `vaxline work
--processes 2` as real processes, so the counts are aggregated across
processes exactly as an operator's Prometheus sees them.

Covers: a known workload gives exact counts (accepted, inserted, duplicates, rejected by field, one
certificate per person); the freshness histogram shows a pause of the workers and the backlog gauge follows
the stream; logs are JSON lines carrying the batch id through both stages, without personal data; `vaxline
status` prints the picture; dashboard and alerts use only declared metrics; promtool accepts the rules and
config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring import metrics
from monitoring.status import Snapshot, quantile
from tests.conftest import ROOT, wait_until
from tests.factory import batch, dose
from tests.test_crash import free_port
from vaxline.dcc.keys import KeyStore

MONITORING = ROOT / "monitoring"


def declared_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if hasattr(value, "_name") and hasattr(value, "_type"):
            base = value._name
            names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def test_dashboard_and_alerts_use_only_declared_metrics():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    used = set(re.findall(r"vaxline_[a-z_]+", json.dumps(dashboard) + (MONITORING / "alerts.yml").read_text()))
    assert used and used <= declared_names(), used - declared_names()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("in and out", "freshness", "backlog", "errors", "connections"):
        assert needed in titles


@pytest.mark.parametrize("command", [["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]])
def test_promtool_accepts_the_shipped_rules_and_config(command):
    if not shutil.which("promtool"):
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
        pytest.skip("promtool is not installed (scripts/setup.sh installs it when run as root)")
    result = subprocess.run(["promtool", *command], cwd=MONITORING, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_quantiles_follow_prometheus_histogram_quantile():
    after = {0.1: 5.0, 0.5: 8.0, 1.0: 10.0, float("inf"): 10.0}
    assert quantile(0.5, {}, after) == pytest.approx(0.1)
    assert quantile(0.99, {}, after) == pytest.approx(0.975)
    assert quantile(0.5, after, after) == pytest.approx(0.1)  # nothing new: all observations
    assert quantile(0.5, {}, {float("inf"): 0.0}) is None


# -- a deployment of real processes -------------------------------------------------

class Deployment:
    def __init__(self, settings, folder: Path):
        self.settings = settings
        self.folder = folder
        self.port, self.metrics_port = free_port(), free_port()
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, role: str, *args: str) -> None:
        env = {**os.environ, **self.settings.to_env()}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(self.folder / f"{role}.log", "wb")
        with log:
            self.processes[role] = subprocess.Popen(
                [sys.executable, "-m", "commands", "--data-dir", str(self.folder / role), role, *args],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)

    def children(self, role: str) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.processes[role].pid), "-f", "spawn_main"],
                             capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def signal_workers(self, sig: int) -> None:
        for pid in self.children("work"):
            os.kill(pid, sig)

    def scrape(self) -> Snapshot:
        families = []
        for url in (f"http://127.0.0.1:{self.port}/metrics", f"http://127.0.0.1:{self.metrics_port}/metrics"):
            with urllib.request.urlopen(url, timeout=5) as response:
                families.extend(text_string_to_metric_families(response.read().decode()))
        return Snapshot.from_families(families)

    def post(self, token: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/doses", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
            return json.loads(response.read())

    def stop(self) -> None:
        self.signal_workers(signal.SIGCONT)
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "".join((self.folder / f"{role}.log").read_text() for role in self.processes)


@pytest.fixture
async def deployment(settings, tmp_path):
    deployed = Deployment(settings, tmp_path)
    KeyStore(tmp_path / "work" / "keys").create()  # `vaxline work` refuses to start certifiers without a key
    deployed.start("serve", "--host", "127.0.0.1", "--port", str(deployed.port), "--processes", "2")
    deployed.start("work", "--processes", "2", "--metrics-host", "127.0.0.1",
                   "--metrics-port", str(deployed.metrics_port))

    def up() -> bool:
        try:
            deployed.scrape()
            return len(deployed.children("work")) == 4 and len(deployed.children("serve")) == 2
        except OSError:
            return False

    try:
        await wait_until(up, timeout=60, message="ingest and workers up")
        yield deployed
    finally:
        deployed.stop()


async def site_token(settings) -> str:
    import asyncpg

    from storage.sites import add_site

    conn = await asyncpg.connect(settings.database_url)
    try:
        return (await add_site(conn, code="MON-1", name="Monitoring", province=1, kind="fixed"))[1]
    finally:
        await conn.close()


async def test_a_known_workload_gives_exact_counts_across_processes(deployment, settings, db):
    token = await site_token(settings)
    for n in range(10):
        doses = batch(n * 10, 10)["doses"]
        doses.append(dose(900 + n, national_id="12"))  # rejected: national_id
        doses.append(dose(950 + n, lot=""))  # rejected: lot
        deployment.post(token, {"doses": doses})
    for n in range(3):
        deployment.post(token, batch(n * 10, 10))  # 30 duplicates
    await wait_until(lambda: db.fetchval("SELECT count(*) = 13 FROM batches"), message="13 receipts")

    def settled():
        snapshot = deployment.scrape()
        return snapshot if snapshot.persisted() == 130 else None

    snapshot = await wait_until(settled, message="metrics caught up")
    assert snapshot.value(metrics.DOSES_ACCEPTED) == 130
    assert snapshot.value(metrics.DOSES_INSERTED) == 100
    assert snapshot.value(metrics.DOSES_DUPLICATE) == 30
    rejected = {}
    for family in text_string_to_metric_families(
            urllib.request.urlopen(f"http://127.0.0.1:{deployment.port}/metrics").read().decode()):
        for sample in family.samples:
            if sample.name == metrics.DOSES_REJECTED:
                rejected[sample.labels["reason"]] = sample.value
    assert rejected == {"national_id": 10, "lot": 10}
    assert snapshot.value(metrics.WORKERS_RUNNING) == 2
    # One person per inserted dose, each with one dose: exactly one certificate each, whatever the redeliveries.
    await wait_until(lambda: deployment.scrape().value(metrics.CERTIFICATES_ISSUED) == 100,
                     message="100 certificates counted")
    certified = deployment.scrape()
    assert certified.freshness["certified"][float("inf")] == 100
    assert certified.value(metrics.CERTIFICATES_REVOKED) == 0
    assert certified.value(metrics.CERTIFIERS_RUNNING) == 1

    # Held client connections are summed over both ingest processes (the scrape itself may add one).
    held = [socket.create_connection(("127.0.0.1", deployment.port)) for _ in range(6)]
    try:
        await wait_until(lambda: 6 <= deployment.scrape().value(metrics.OPEN_CONNECTIONS) <= 7,
                         message="6 open connections counted")
    finally:
        for connection in held:
            connection.close()


async def test_freshness_and_backlog_follow_paused_and_resumed_workers(deployment, settings, db):
    token = await site_token(settings)
    deployment.signal_workers(signal.SIGSTOP)
    for n in range(5):
        deployment.post(token, batch(n * 10, 10))

    def backlog(expected):
        return lambda: deployment.scrape().value(metrics.STREAM_BACKLOG) == expected

    await wait_until(backlog(5), message="the backlog gauge showing the 5 waiting batches")
    time.sleep(1.2)  # the pause is what the freshness histogram must show
    deployment.signal_workers(signal.SIGCONT)
    await wait_until(lambda: db.fetchval("SELECT count(*) = 5 FROM batches"), message="5 receipts")
    await wait_until(backlog(0), message="the backlog gauge back at 0")
    buckets = deployment.scrape().freshness["persisted"]
    assert buckets[float("inf")] == 5
    assert buckets[1.0] == 0  # every batch waited more than a second: the histogram saw the pause


async def test_logs_are_json_lines_carrying_the_batch_id_and_no_personal_data(deployment, settings, db):
    token = await site_token(settings)
    body = batch(0, 20, phone="0987654321")
    batch_id = deployment.post(token, body)["batch_id"]
    await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM batches"), message="the receipt")
    await wait_until(lambda: deployment.logs().count(batch_id) >= 2, message="both stages logging the batch")
    deployment.stop()
    text = deployment.logs()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert {r["msg"] for r in records if r.get("batch_id") == batch_id} >= {"batch accepted", "batch persisted"}
    for item in body["doses"]:
        for field in ("national_id", "full_name", "phone"):
            assert item[field] not in text, f"{field} found in the logs"


async def test_status_prints_the_picture_of_a_running_deployment(deployment, settings, db):
    token = await site_token(settings)
    deployment.post(token, batch(0, 7))
    await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM batches"), message="the receipt")
    await wait_until(lambda: deployment.scrape().persisted() == 7, message="metrics caught up")
    result = subprocess.run(
        [sys.executable, "-m", "commands", "status", "--url", f"http://127.0.0.1:{deployment.port}/metrics",
         "--url", f"http://127.0.0.1:{deployment.metrics_port}/metrics"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0] + " " + line.split()[1]: line for line in result.stdout.splitlines() if line.strip()}
    assert lines["doses accepted"].split()[2] == "7"
    assert lines["doses persisted"].split()[2] == "7"
    assert "p50" in lines["freshness 202->persisted"]
    await wait_until(lambda: deployment.scrape().value(metrics.CERTIFICATES_ISSUED) == 7, message="certified")
    assert "shard  backlog  pending      lag" in result.stdout
    unreachable = subprocess.run([sys.executable, "-m", "commands", "status", "--url", "http://127.0.0.1:1/metrics"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and "127.0.0.1:1" in unreachable.stderr
