"""The operations metrics' sources, as units: a process's own resources and the signing key's rotation.

Covers: `monitoring.processes.usage()` against what the test does to its own process (files opened show
in the open descriptors, the limit is RLIMIT_NOFILE, CPU burnt shows in the CPU seconds), the sampler's CPU
counter growing by what was used, and `vaxline_build_info`; `KeyStore.signing_validity` (a key's DSC
remaining, 0 without a key that signs) and `ensure(ahead=)`; `deploy.keys.KeyRotation` (a key 340 days old
is rotated a month ahead, once; the check runs at most hourly; a folder open to others is logged, not
raised) and the certifiers' export of the validity. A real `vaxline work` rotating at start is in
tests/test_deploy.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import resource
import time

import pytest
from prometheus_client import REGISTRY

from deploy.keys import KeyRotation
from monitoring import names, processes
from vaxline.dcc.keys import ROTATE_AHEAD, KeyStore
from workers.certify import export_key_validity

DAY = 86400


def test_usage_reads_this_process():
    before = processes.usage()
    with contextlib.ExitStack() as files:
        for _ in range(20):
            files.enter_context(open(os.devnull))
        assert processes.usage().open_fds >= before.open_fds + 20
    assert before.max_fds == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert before.resident_bytes > 10 * 1024**2
    started = time.process_time()
    while time.process_time() - started < 0.3:  # burn CPU
        pass
    assert processes.usage().cpu_seconds >= before.cpu_seconds + 0.25


def test_the_sampler_exports_gauges_a_cpu_counter_and_the_build():
    sampler = processes.Sampler("unit-test")
    first = sampler.sample()
    labels = {"role": "unit-test"}
    assert REGISTRY.get_sample_value(names.PROCESS_OPEN_FDS, labels) == first.open_fds
    assert REGISTRY.get_sample_value(names.PROCESS_MAX_FDS, labels) == first.max_fds
    assert REGISTRY.get_sample_value(names.PROCESS_RESIDENT_MEMORY, labels) == first.resident_bytes
    cpu = {**labels, "pid": str(os.getpid())}
    assert REGISTRY.get_sample_value(names.PROCESS_CPU, cpu) == pytest.approx(first.cpu_seconds)
    started = time.process_time()
    while time.process_time() - started < 0.2:
        pass
    second = sampler.sample()
    assert REGISTRY.get_sample_value(names.PROCESS_CPU, cpu) == pytest.approx(second.cpu_seconds)
    stop = processes.start("unit-test-thread", every=3600)
    stop.set()
    build = {"version": processes.version(), "python": platform.python_version()}
    assert REGISTRY.get_sample_value(names.BUILD_INFO, build) == 1


def aged_key(keys: KeyStore, days: int):
    return keys.create(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=days))


def test_signing_validity_and_ensure_ahead(tmp_path):
    keys = KeyStore(tmp_path / "keys")
    assert keys.signing_validity() == 0.0  # no key
    aged_key(keys, 340)  # its DSC ends in 390 days: it signs now, not in a month
    assert keys.signing_validity() == pytest.approx(390 * DAY, abs=60)
    assert keys.ensure() is None  # it can sign now
    created = keys.ensure(ahead=ROTATE_AHEAD)
    assert created is not None and keys.signing_key().kid == created.kid
    assert keys.signing_validity() == pytest.approx(730 * DAY, abs=60)
    assert keys.ensure(ahead=ROTATE_AHEAD) is None


def test_key_rotation_rotates_once_a_month_ahead_and_checks_hourly(tmp_path):
    keys = KeyStore(tmp_path / "keys")
    old = aged_key(keys, 340)
    now = [0.0]
    rotation = KeyRotation(keys, clock=lambda: now[0])
    rotation()  # the first call checks at once
    new = keys.signing_key().kid
    assert len(keys.public_keys()) == 2 and new != old.kid
    rotation()
    assert len(keys.public_keys()) == 2  # the new key signs for two years: nothing more to do
    for path in (tmp_path / "keys").glob(f"{new.hex()}.*"):  # the new key lost: only the old one left
        path.unlink()
    now[0] += 1800
    rotation()  # within the hour: not looked at
    assert len(keys.public_keys()) == 1
    now[0] += 1800
    rotation()  # an hour on: rotated again
    assert len(keys.public_keys()) == 2 and keys.signing_key().kid not in (old.kid, new)


def test_the_rotation_logs_a_refused_folder(tmp_path, caplog):
    keys = KeyStore(tmp_path / "keys")
    aged_key(keys, 340)
    (tmp_path / "keys").chmod(0o755)
    with caplog.at_level(logging.ERROR, logger="vaxline"):
        assert KeyRotation(keys).rotate() is None
    assert "signing key rotation" in caplog.text and "failed" in caplog.text


def test_certifiers_export_the_validity(tmp_path):
    keys = KeyStore(tmp_path / "keys")
    certify = {"role": "certify"}
    export_key_validity(keys)
    assert REGISTRY.get_sample_value(names.SIGNING_KEY_VALIDITY, certify) == 0.0
    keys.create()
    export_key_validity(keys)
    assert REGISTRY.get_sample_value(names.SIGNING_KEY_VALIDITY, certify) == pytest.approx(730 * DAY, abs=60)
