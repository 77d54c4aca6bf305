"""The shipped alert rules and scrape configs, under promtool and against the docs.

Covers: `promtool test rules monitoring/alerts_test.yml` passes, and that file checks every alert of
alerts.yml both firing and not firing; every alert links a runbook (`runbook_url`) to a heading that exists
in docs/operations.md; both scrape configs (prometheus.yml for `vaxline run`, prometheus-hosts.yml for a
layout over hosts) pass `promtool check config`, every scrape job has its `up` alert, and prometheus.yml
scrapes exactly what `vaxline run` serves (one target, ingest's port, which carries every process's
metrics). promtool comes from Debian's prometheus package (scripts/setup.sh): without it these tests skip,
and fail under CI=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

MONITORING = ROOT / "monitoring"
OPERATIONS = ROOT / "docs" / "operations.md"
CONFIGS = ["prometheus.yml", "prometheus-hosts.yml"]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
        pytest.skip("promtool is not installed (scripts/setup.sh installs it when run as root)")
    return path


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_unit_tests_of_the_alerts_pass():
    result = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for test in tests:
        for check in test["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) - firing == set(), "alerts never tested firing"
    assert set(alerts()) - quiet == set(), "alerts never tested not firing"
    assert firing | quiet <= set(alerts()), "tests of alerts that do not exist"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, flags=re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_alert_links_a_runbook_heading_of_the_operations_doc():
    anchors = github_anchors(OPERATIONS.read_text())
    for name, rule in alerts().items():
        url = rule.get("annotations", {}).get("runbook_url", "")
        assert url.startswith("docs/operations.md#"), f"{name}: runbook_url {url!r}"
        assert url.split("#", 1)[1] in anchors, f"{name}: no heading for {url} in docs/operations.md"
        assert rule["annotations"].get("summary"), f"{name}: no summary"


@pytest.mark.parametrize("config", CONFIGS)
def test_promtool_accepts_the_scrape_config(config):
    result = subprocess.run([promtool(), "check", "config", config], cwd=MONITORING, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", CONFIGS)
def test_every_scrape_job_has_an_up_alert(config):
    jobs = {job["job_name"] for job in yaml.safe_load((MONITORING / config).read_text())["scrape_configs"]}
    watched = {m for rule in alerts().values() for m in re.findall(r'up\{job="([^"]+)"\} == 0', rule["expr"])}
    assert jobs and jobs <= watched, jobs - watched


def test_the_demo_config_scrapes_what_vaxline_run_serves():
    """`vaxline run` serves every process's metrics on ingest's port (8080 by default) and nothing else."""
    from commands.main import parser

    port = parser().parse_args(["run"]).port
    [job] = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
    assert job["job_name"] == "vaxline-ingest" and job["metrics_path"] == "/metrics"
    assert [t for c in job["static_configs"] for t in c["targets"]] == [f"127.0.0.1:{port}"]
