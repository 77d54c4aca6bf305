"""Deployment over hosts: the systemd units and the container file of deploy/, and their health checks.

Covers: `systemd-analyze verify` accepts the five units (ingest, workers, certifiers, reviewers, notifier; with
ExecStart pointed at this checkout's vaxline); each is Type=notify with a watchdog and runs one role alone,
with options the real `vaxline` parser takes, its own metrics port (the ones prometheus-hosts.yml scrapes) and
multiprocess folder; the sd_notify code against a real unix datagram socket (a path and the abstract
namespace; nothing sent without NOTIFY_SOCKET; watchdog pings half the period apart). Real processes under a
NOTIFY_SOCKET: `vaxline serve` says READY=1 only once its /readyz answers 200 (never while Redis is
unreachable, though it answers /healthz), then pings the watchdog; `vaxline work` says READY=1 once its
worker and certifier run, having rotated a key 340 days old (it signs 25 days more), and exports each
process's resources, the build and the new key's validity. The container health check
(`python -m deploy.healthcheck`) passes on ingest's /readyz and on a `vaxline work` /metrics with a consumer
running, and fails, naming why, on a port nobody answers; the Containerfile copies every package, runs
`vaxline`, and has a HEALTHCHECK running it. systemd-analyze comes with Debian's systemd (scripts/setup.sh):
without it the verify test skips, and fails under CI=1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from commands.main import parser
from deploy import healthcheck
from deploy.sdnotify import Notifier, notify
from monitoring import names
from tests.conftest import ROOT
from tests.test_crash import free_port
from vaxline.dcc.keys import KeyStore

UNITS = ROOT / "deploy" / "systemd"
ROLES = {  # unit -> what its `vaxline` runs
    "vaxline-ingest.service": "serve",
    "vaxline-workers.service": "work",
    "vaxline-certifiers.service": "work",
    "vaxline-reviewers.service": "work",
    "vaxline-notifier.service": "work",
}


def unit(name: str) -> dict[str, list[str]]:
    """The unit's [Service] keys (a key given twice keeps both values)."""
    keys: dict[str, list[str]] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


def command_of(name: str) -> list[str]:
    """The unit's `vaxline` arguments, after the executable (systemd's %H as a host name)."""
    [start] = unit(name)["ExecStart"]
    executable, *args = shlex.split(start.replace("%H", "host-a"))
    assert executable.endswith("/vaxline")
    return args


def test_systemd_analyze_verifies_the_units(tmp_path):
    if not shutil.which("systemd-analyze"):
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: scripts/setup.sh installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (scripts/setup.sh installs it when run as root)")
    vaxline = Path(sys.executable).parent / "vaxline"
    for name in ROLES:  # this checkout's vaxline, and a user that exists here
        text = (UNITS / name).read_text().replace("/opt/vaxline/.venv/bin/vaxline", str(vaxline))
        (tmp_path / name).write_text(re.sub(r"^(User|Group)=vaxline$", r"\1=root", text, flags=re.MULTILINE))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *ROLES], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


def test_each_unit_runs_one_role_with_a_health_check_and_its_own_metrics():
    hosts = yaml.safe_load((ROOT / "monitoring" / "prometheus-hosts.yml").read_text())["scrape_configs"]
    scraped = {target.split(":")[1] for job in hosts for c in job["static_configs"] for target in c["targets"]}
    ports, folders = set(), set()
    for name, command in ROLES.items():
        keys = unit(name)
        assert keys["Type"] == ["notify"] and keys["WatchdogSec"] and keys["Restart"] == ["always"]
        args = parser().parse_args(command_of(name))  # options the real command takes
        assert args.func.__name__ == f"cmd_{command}"
        port = str(args.port if command == "serve" else args.metrics_port)
        ports.add(port)
        [multiproc] = [e for e in keys["Environment"] if e.startswith("PROMETHEUS_MULTIPROC_DIR=")]
        folders.add(multiproc)
        assert multiproc == f"PROMETHEUS_MULTIPROC_DIR=/run/{keys['RuntimeDirectory'][0]}"  # fresh at each start
        if command == "work":
            running = {"workers": args.processes, "certifiers": args.certifiers, "reviewers": args.reviewers,
                       "notifier": args.notifiers}
            assert [role for role, n in running.items() if n] == [name.split("-")[1].split(".")[0]]
    assert len(ports) == len(folders) == len(ROLES) and ports == scraped
    assert int(unit("vaxline-ingest.service")["LimitNOFILE"][0]) >= 20_000  # one descriptor per connection


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def received(sock: socket.socket, *, timeout: float) -> list[str]:
    """The datagrams that arrive within `timeout`."""
    messages, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def test_sd_notify_on_a_real_socket(notify_socket):
    path, sock = notify_socket
    assert notify("READY=1", environ={}) is False  # not under systemd: nothing sent
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
    now = [100.0]
    notifier = Notifier(environ=env, clock=lambda: now[0])
    assert notifier.ready("serving") and sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert notifier.every == 1.0
    notifier.tick()  # within half the period: no ping
    now[0] += 1.0
    notifier.tick()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert received(sock, timeout=0.3) == []
    assert Notifier(environ={**env, "WATCHDOG_PID": "1"}).every is None  # the watchdog is another process's

    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"vaxline-test-{os.getpid()}"
    abstract.bind("\0" + name)
    try:
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(4096) == b"STOPPING=1"
    finally:
        abstract.close()


def spawn_command(settings, folder: Path, args: list[str], sock_path: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.to_env(), "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{args[0]}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "commands", "--data-dir", str(folder), *args], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=log)


def stopped(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def wait_for(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.2)


def first_message(sock: socket.socket, process: subprocess.Popen, *, timeout: float = 60) -> str:
    """The first notification other than a watchdog ping (the supervisor pings from its start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the command exited"
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        if message != "WATCHDOG=1":
            return message
    raise AssertionError(f"no notification within {timeout}s")


def test_serve_says_ready_once_it_serves_then_pings_the_watchdog(settings, tmp_path, notify_socket):
    path, sock = notify_socket
    port = free_port()
    serve = spawn_command(settings, tmp_path / "serve", ["serve", "--host", "127.0.0.1", "--port", str(port),
                                                         "--processes", "1"], path)
    try:
        assert first_message(sock, serve) == "READY=1\nSTATUS=serving"
        assert status(f"http://127.0.0.1:{port}/readyz") == 200  # READY came only once this held
        assert healthcheck.check(f"http://127.0.0.1:{port}/readyz") is None
        assert "WATCHDOG=1" in received(sock, timeout=3)
    finally:
        stopped(serve)
    assert "does not answer" in healthcheck.check(f"http://127.0.0.1:{port}/readyz")
    assert healthcheck.main([f"http://127.0.0.1:{port}/readyz"]) == 1


def test_serve_is_not_ready_while_redis_is_unreachable(make_settings, tmp_path, notify_socket):
    path, sock = notify_socket
    port = free_port()
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    serve = spawn_command(settings, tmp_path / "serve", ["serve", "--host", "127.0.0.1", "--port", str(port),
                                                         "--processes", "1"], path)
    try:
        deadline = time.monotonic() + 30
        while status(f"http://127.0.0.1:{port}/healthz") != 200:  # the process serves...
            assert time.monotonic() < deadline and serve.poll() is None, "ingest did not start"
            time.sleep(0.2)
        assert status(f"http://127.0.0.1:{port}/readyz") == 503  # ...but is not ready
        assert "answered 503" in healthcheck.check(f"http://127.0.0.1:{port}/readyz")
        assert set(received(sock, timeout=4)) <= {"WATCHDOG=1"}  # so systemd is not told READY=1
        assert serve.poll() is None
    finally:
        stopped(serve)


def test_work_says_ready_once_its_consumers_run_rotates_the_key_and_passes_the_health_check(
        settings, tmp_path, notify_socket):
    path, sock = notify_socket
    metrics_port = free_port()
    keys = KeyStore(tmp_path / "work" / "keys")
    old = keys.create(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=340))  # signs 25 days more
    work = spawn_command(settings, tmp_path / "work", [
        "work", "--processes", "1", "--certifiers", "1", "--reviewers", "0", "--name", "deploy-test",
        "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)], path)
    try:
        assert first_message(sock, work) == "READY=1\nSTATUS=serving"
        assert len(keys.public_keys()) == 2 and keys.signing_key().kid != old.kid  # rotated at start
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert healthcheck.check(url) is None
        with urllib.request.urlopen(url, timeout=5) as response:
            exposition = response.read().decode()
        samples = [s for f in text_string_to_metric_families(exposition) for s in f.samples]
        fds = {s.labels["role"]: s for s in samples if s.name == names.PROCESS_OPEN_FDS}
        limits = {s.labels["role"]: s for s in samples if s.name == names.PROCESS_MAX_FDS}
        assert set(fds) == set(limits) == {"persist", "certify"}  # one series per process
        assert all(0 < fds[role].value < limits[role].value for role in fds)
        pids = {s.labels["pid"] for s in fds.values()}
        assert len(pids) == 2 and all(pid.isdigit() for pid in pids)
        rss = [s for s in samples if s.name == names.PROCESS_RESIDENT_MEMORY]
        assert {s.labels["pid"] for s in rss} == pids and all(s.value > 10 * 1024**2 for s in rss)
        assert {s.labels["pid"] for s in samples if s.name == names.PROCESS_CPU} == pids
        [build] = [s for s in samples if s.name == names.BUILD_INFO]
        assert build.value == 1 and build.labels["python"] == platform.python_version() and build.labels["version"]
        validity = {}

        def exported() -> bool:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            validity.update((s.labels["role"], s.value) for f in text_string_to_metric_families(text)
                            for s in f.samples if s.name == names.SIGNING_KEY_VALIDITY)
            return bool(validity)

        wait_for(exported, "the signing key's validity")
        assert validity == {"certify": pytest.approx(730 * 86400, abs=120)}  # the new key's DSC
    finally:
        stopped(work)


def test_the_notifier_unit_runs_its_notifier_and_refuses_to_run_nothing(settings, tmp_path, notify_socket):
    """The notifier unit's own command: READY=1 once its notifier runs; on a host without VAXLINE_NOTIFIER it
    exits 2 (the units' RestartPreventExitStatus) naming the setting, rather than idling as a healthy unit."""
    path, sock = notify_socket
    command = command_of("vaxline-notifier.service")
    args = command[command.index("work"):]  # the test gives its own --data-dir
    args = [a if a != "9468" else str(free_port()) for a in args] + ["--metrics-host", "127.0.0.1"]
    work = spawn_command(dataclasses.replace(settings, notifier="dev"), tmp_path / "dev", args, path)
    try:
        assert first_message(sock, work) == "READY=1\nSTATUS=serving"
    finally:
        stopped(work)
    idle = spawn_command(dataclasses.replace(settings, notifier=""), tmp_path / "none", args, path)
    try:
        assert idle.wait(timeout=60) == 2
    finally:
        stopped(idle)
    assert "VAXLINE_NOTIFIER" in (tmp_path / "none" / "work.log").read_text()
    assert "RestartPreventExitStatus" in unit("vaxline-notifier.service")


def test_the_container_file_runs_vaxline_with_a_health_check():
    text = (ROOT / "deploy" / "Containerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    by_name: dict[str, list[str]] = {}
    for name, rest in instructions:
        by_name.setdefault(name, []).append(rest)
    [healthcheck_line] = by_name["HEALTHCHECK"]
    assert '"-m", "deploy.healthcheck"' in healthcheck_line
    assert by_name["ENTRYPOINT"] == ['["vaxline", "--data-dir", "/var/lib/vaxline"]']
    assert by_name["USER"] == ["vaxline"]
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = {rest.split()[0] for rest in by_name["COPY"]}
    assert {p.split(".")[0] for p in packages} <= copied
    cmd = json.loads(by_name["CMD"][0])  # the default role: ingest
    assert parser().parse_args(["--data-dir", "/var/lib/vaxline", *cmd]).func.__name__ == "cmd_serve"
