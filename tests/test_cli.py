"""The command line, as an operator runs it: real processes, real services.

Covers: `vaxline run` end to end (the banner's curl, a persisted receipt, Ctrl-C exits 0); `migrate`; `sites
add` prints the token last and stores only its hash; a SIGKILLed supervisor's children stop too; `keys init`
once (key file 0600), then `verify`'s exit codes 0/1/2 and `--json` for valid, expired (`--clock`),
tampered, signed by a stranger (`--dsc`), revoked (`--revocations`), and usage errors.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ROOT
from tests.test_crash import free_port

VAXLINE = [sys.executable, "-m", "commands"]


def run_cli(*args, settings=None, env=None, **kwargs):
    environment = {**os.environ, **(settings.to_env() if settings else {}), **(env or {})}
    return subprocess.run([*VAXLINE, *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=60, **kwargs)


def test_migrate_is_idempotent(settings):
    first = run_cli("migrate", settings=settings)
    assert first.returncode == 0, first.stderr
    assert "schema up to date" in first.stdout  # the template database was migrated already


def test_sites_add_prints_the_token_last_and_stores_only_its_hash(settings):
    result = run_cli("sites", "add", "--code", "HN-0001", "--name", "Trạm Y tế Phường Láng Hạ",
                     "--province", "1", "--kind", "mobile", settings=settings)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"vx_[A-Za-z0-9_-]{40,}", token)
    dump = subprocess.run([sys.executable, "-c", (
        "import asyncio, asyncpg, sys\n"
        "async def main():\n"
        "    c = await asyncpg.connect(sys.argv[1])\n"
        "    print(await c.fetch('SELECT * FROM sites'))\n"
        "asyncio.run(main())\n"), settings.database_url], capture_output=True, text=True, check=True)
    assert token not in dump.stdout and "mobile" in dump.stdout


def test_commands_without_urls_explain_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run([*VAXLINE, "--data-dir", str(tmp_path), "migrate"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "DATABASE_URL" in result.stderr


def test_global_options_go_before_or_after_the_command(tmp_path):
    """`--data-dir` is the same before the command and after it (or after a subcommand), as docs/commands.md says."""
    from commands.main import parser

    assert parser().parse_args(["run", "--data-dir", "x"]).data_dir == Path("x")
    assert parser().parse_args(["--data-dir", "x", "run"]).data_dir == Path("x")
    assert parser().parse_args(["sites", "token", "C", "--data-dir", "y"]).data_dir == Path("y")
    assert parser().parse_args(["--data-dir", "x", "keys", "list", "--data-dir", "y"]).data_dir == Path("y")
    env = {k: v for k, v in os.environ.items() if k != "VAXLINE_DATA_DIR"}
    assert parser().parse_args(["run"]).data_dir == Path(os.environ.get("VAXLINE_DATA_DIR", ".vaxline"))
    created = run_cli("keys", "init", "--data-dir", str(tmp_path / "after"), env=env)
    assert created.returncode == 0, created.stderr
    assert list((tmp_path / "after" / "keys").glob("*.key"))
    listed = run_cli("keys", "list", "--data-dir", str(tmp_path / "after"), env=env)
    assert listed.returncode == 0 and "signing key here" in listed.stdout


def test_loadtest_hands_its_arguments_on():
    help_text = run_cli("loadtest", "--help")
    assert help_text.returncode == 0 and "sessions" in help_text.stdout and "prepare" in help_text.stdout
    refused = run_cli("loadtest", "day", "--within", "ten minutes")
    assert refused.returncode == 2 and "is not a duration" in refused.stderr


def _request(url, *, token=None, body=None):
    headers = {"Content-Type": "application/json"} if body else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_run_starts_everything_and_ctrl_c_stops_it_cleanly(tmp_path):
    """`vaxline run` on the embedded default: the banner's curl works, Ctrl-C loses nothing."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    with (tmp_path / "run.log").open("w") as log:  # read it when this test fails
        process = subprocess.Popen([*VAXLINE, "--data-dir", str(tmp_path / "data"), "run", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while not any(line.startswith("Ctrl-C stops everything") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        token = lines[lines.index(next(line for line in lines if "bearer token" in line)) + 1].strip()
        curl = next(line for line in lines if line.startswith("curl -s -X POST")).strip()
        if shutil.which("curl"):
            posted = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30, check=True)
            batch = json.loads(posted.stdout)
        else:
            body = shlex.split(curl)[-1].encode()
            _, batch = _request(f"http://127.0.0.1:{port}/v1/doses", token=token, body=body)
        assert batch["accepted"] == 1 and batch["rejected"] == []
        deadline = time.monotonic() + 30
        while _request(f"http://127.0.0.1:{port}/v1/batches/{batch['batch_id']}", token=token)[1]["status"] != "persisted":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        lookup = next(line for line in lines if line.startswith("curl -s -X POST") and "lookup" in line).strip()
        certificate = _certificate_of_demo(port, shlex.split(lookup)[-1].encode())
        assert [d["dn"] for d in certificate["doses"]] == [1]
        verified = subprocess.run([*VAXLINE, "--data-dir", str(tmp_path / "data"), "verify", "--json",
                                   certificate["hc1"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["payload"]["v"][0]["ci"] == certificate["uvci"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (tmp_path / "data" / "urls.json").exists()
    aof = list((tmp_path / "data" / "redis").glob("appendonly*"))
    assert aof, "the embedded Redis keeps an append-only file"


def _certificate_of_demo(port: int, body: bytes) -> dict:
    """Poll the banner's lookup until the certificate is there (a few polls: lookups are rate-limited)."""
    deadline = time.monotonic() + 40
    while True:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/certificates/lookup", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            assert e.code == 404 and time.monotonic() < deadline, e.code
        time.sleep(1.5)


def test_children_stop_when_the_supervisor_is_killed(tmp_path, settings):
    """A SIGKILLed `vaxline serve` must not leave ingest processes holding the port."""
    port = free_port()
    process = subprocess.Popen([*VAXLINE, "--data-dir", str(tmp_path), "serve", "--port", str(port),
                                "--processes", "2"], cwd=ROOT, env={**os.environ, **settings.to_env()},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _request(f"http://127.0.0.1:{port}/healthz")[0] == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(children) >= 2
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
              for pid in children):
        assert time.monotonic() < deadline, "ingest children outlived their supervisor"
        time.sleep(0.1)


def _offline(data_dir: Path, *args, **kwargs):
    """The CLI with no deployment configured: what a verifier on another machine has."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run([*VAXLINE, "--data-dir", str(data_dir), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, **kwargs)


def _signed(data_dir: Path) -> tuple[str, str]:
    """(hc1, uvci) of a certificate signed with the data dir's key, as a certifier would sign it."""
    import datetime as dt

    from vaxline.dcc.issue import Signer, expiry, new_uvci
    from vaxline.dcc.keys import KeyStore
    from vaxline.dcc.payload import statement
    from vaxline.sequence import HistoryDose

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    stated = statement("Phạm Minh Dũng", dt.date(1985, 3, 9),
                       [HistoryDose("S-1", "R-1", "BBIBP-CorV", "L1", 1, now - dt.timedelta(days=30)),
                        HistoryDose("S-1", "R-2", "BBIBP-CorV", "L2", 2, now - dt.timedelta(days=2))])
    uvci = new_uvci()
    signer = Signer(KeyStore(data_dir / "keys").signing_key())
    return signer.sign(stated.dcc(uvci), now, expiry(now)), uvci


def test_keys_init_once_then_verify_offline_with_the_exit_code_contract(tmp_path):
    import base64
    import hashlib

    data = tmp_path / "data"
    first = _offline(data, "keys", "init")
    assert first.returncode == 0 and "created signing key" in first.stdout, first.stderr
    assert "exists" in _offline(data, "keys", "init").stdout
    [listed] = _offline(data, "keys", "list").stdout.splitlines()
    kid = listed.split()[0]
    [key_file] = (data / "keys").glob("*.key")
    assert key_file.stat().st_mode & 0o077 == 0, "the private key is readable by its owner only"
    hc1, uvci = _signed(data)

    valid = _offline(data, "verify", "--json", hc1)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    verdict = json.loads(valid.stdout)
    assert (verdict["valid"], verdict["stage"], verdict["kid"]) == (True, None, kid)
    assert verdict["payload"]["v"][0]["ci"] == uvci and verdict["payload"]["v"][0]["dn"] == 2
    assert key_file.read_text() not in valid.stdout + valid.stderr
    assert _offline(data, "verify", "-", input=hc1 + "\n").returncode == 0

    expired = _offline(data, "verify", "--json", "--clock", "2040-01-01T00:00:00Z", hc1)
    assert expired.returncode == 1 and json.loads(expired.stdout)["stage"] == "expiry"
    tampered = _offline(data, "verify", "--json", hc1[:-6] + ("A" if hc1[-6] != "A" else "B") + hc1[-5:])
    assert tampered.returncode == 1 and json.loads(tampered.stdout)["valid"] is False

    dsc = (data / "keys" / f"{kid}.crt")
    assert _offline(data, "verify", "--dsc", str(dsc), hc1).returncode == 0
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    der = x509.load_pem_x509_certificate(dsc.read_bytes()).public_bytes(Encoding.DER)
    assert _offline(data, "verify", "--dsc", base64.b64encode(der).decode(), hc1).returncode == 0
    other = tmp_path / "other"
    _offline(other, "keys", "init")
    stranger = _offline(data, "verify", "--json", "--dsc", str(next((other / "keys").glob("*.crt"))), hc1)
    assert stranger.returncode == 1 and json.loads(stranger.stdout)["stage"] == "signature"

    revocations = tmp_path / "revocations.json"
    revocations.write_text(json.dumps({"hashes": [{"hash": hashlib.sha256(uvci.encode()).digest()[:16].hex()}]}))
    revoked = _offline(data, "verify", "--json", "--revocations", str(revocations), hc1)
    assert revoked.returncode == 1 and json.loads(revoked.stdout)["stage"] == "revocation"

    assert _offline(data, "verify", "--clock", "2040-01-01t00:00:00z", hc1).returncode == 1  # RFC 3339 allows lower case
    malformed = tmp_path / "malformed.json"
    malformed.write_text(json.dumps({"hashes": 5}))
    for usage in (["verify"], ["verify", "--clock", "yesterday", hc1], ["verify", "--dsc", "/nonexistent", hc1],
                  ["verify", "--dsc", "bm90IGEgY2VydGlmaWNhdGU=", hc1], ["verify", "--revocations", str(malformed), hc1]):
        result = _offline(data, *usage)
        assert result.returncode == 2, (usage, result.stdout, result.stderr)
    assert _offline(tmp_path / "empty", "verify", hc1).returncode == 2  # no trust list at all
