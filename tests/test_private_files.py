"""Private files refused loudly everywhere (issue 16, items 1 and 11, after review).

Covers: a key folder or key open to other users is a misconfiguration, never an I/O failure to wait out
(not an OSError); the certifiers' signer raises it, logs its path, mode and chmod once (not per call), and
signs again after the chmod without a restart, because a chmod changes the folder's version; a running
certifier logs it, signs nothing meanwhile, and certifies after the chmod; ingest's lookup, verifier and
trust list answer 500 "misconfigured" with no path while the log names path and mode, and answer again
after the chmod; ingest and `vaxline serve`/`run` refuse to start with a loose key folder, a server secret
looser than 0600 or in a folder others may write, or a malformed VAXLINE_TRUSTED_PROXIES (named), which is
parsed once at start.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from ingest.clients import TRUSTED_PROXIES
from ingest.http import MISCONFIGURED
from ingest.server import ingest_app
from storage import issuing
from tests.conftest import wait_until
from tests.factory import dose
from tests.stack import running_stack
from tests.test_key_modes import cli
from vaxline.dcc.keys import KeyPermissions, KeyStore
from vaxline.filemodes import LooseMode
from vaxline.links import SECRET_FILE, server_secret


def refusals(caplog, path, mode: int, fix: str, *, logger: str = "") -> list[str]:
    """The error lines (of `logger` and below) that name the path, its mode and the chmod that fixes it."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(logger)
            and str(path) in r.getMessage() and f"{mode:04o}" in r.getMessage() and f"chmod {fix} " in r.getMessage()]


# -- the key folder ------------------------------------------------------------------------------------------

def test_a_refused_key_is_no_io_failure_to_wait_out():
    # ingest maps OSError to 503 "retry later", the lookup and the certifiers' signer took PermissionError
    # for an unreadable key: a mode is neither.
    assert not issubclass(KeyPermissions, OSError) and issubclass(KeyPermissions, LooseMode)


def test_a_chmod_changes_the_key_folders_version(tmp_path):
    keys = KeyStore(tmp_path / "keys")
    public = keys.create()
    key = keys.directory / f"{public.kid.hex()}.key"
    for path, loose, fixed in ((keys.directory, 0o755, 0o700), (key, 0o644, 0o600)):
        before = keys.version()
        os.chmod(path, loose)  # the folder's mtime stays: only the mode (and ctime, coarse) moved
        loosened = keys.version()
        os.chmod(path, fixed)
        assert loosened != before and keys.version() != loosened


def test_the_signer_refuses_a_loose_key_loudly_and_signs_again_after_the_chmod(tmp_path, caplog):
    keys = KeyStore(tmp_path / "keys")
    public = keys.create()
    key = keys.directory / f"{public.kid.hex()}.key"
    signing = issuing.Signing(keys)
    assert signing.signer().key.kid == public.kid
    os.chmod(key, 0o644)
    with caplog.at_level(logging.ERROR, logger="storage.issuing"):
        for _ in range(3):
            with pytest.raises(KeyPermissions):
                signing.signer()
            with pytest.raises(KeyPermissions):  # not None: a lookup must not quietly serve the stored one
                signing.available()
    assert len(refusals(caplog, key, 0o644, "600")) == 1, caplog.text  # once a minute, not per call
    os.chmod(key, 0o600)
    assert signing.signer().key.kid == public.kid  # the same Signing: no restart


async def test_a_certifier_logs_the_refusal_signs_nothing_and_certifies_after_the_chmod(settings, db, caplog):
    keys = KeyStore(settings.signing_keys_dir)
    keys.create()
    with caplog.at_level(logging.ERROR, logger="storage.issuing"):
        async with running_stack(settings, workers=1, certifiers=1) as stack:
            os.chmod(keys.directory, 0o750)
            _, token = await stack.site()
            assert (await stack.post(token, {"doses": [dose(7)]})).status == 202
            await wait_until(lambda: refusals(caplog, keys.directory, 0o750, "700"), message="the refusal logged")
            assert await db.fetchval("SELECT count(*) FROM certificates") == 0
            os.chmod(keys.directory, 0o700)
            await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM certificates"), message="certified")


async def test_ingest_answers_a_refused_key_folder_with_a_500_that_names_no_path(make_settings, db, caplog):
    settings = make_settings(lookup_guess_limit=1)  # a refused lookup counted as a guess would leave none
    keys = KeyStore(settings.signing_keys_dir)
    keys.create()
    person = dose(8)
    async with running_stack(settings, workers=1) as stack:
        _, token = await stack.site()
        assert (await stack.post(token, {"doses": [person]})).status == 202
        await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM doses"), message="persisted")
        os.chmod(keys.directory, 0o755)
        lookup = {"national_id": person["national_id"], "birth_date": person["birth_date"]}
        with caplog.at_level(logging.ERROR, logger="ingest.app"):
            answers = [await stack.client.get("/v1/trust-list"),
                       await stack.client.post("/v1/certificates/lookup", json=lookup),
                       await stack.client.post("/v1/certificates/verify", json={"hc1": "HC1:NCF"})]
        for answer in answers:
            body = await answer.text()
            assert answer.status == 500 and answer.content_type == "application/problem+json", body
            assert json.loads(body) == {"type": "https://vaxline.example/problems/misconfigured", "status": 500,
                                        "title": "The server is misconfigured", "detail": MISCONFIGURED,
                                        "error": MISCONFIGURED}, body
            assert str(keys.directory) not in body and "Retry-After" not in answer.headers
        assert len(refusals(caplog, keys.directory, 0o755, "700", logger="ingest")) == 1, caplog.text  # not per request
        os.chmod(keys.directory, 0o700)
        assert (await stack.client.get("/v1/trust-list")).status == 200
        found = await stack.client.post("/v1/certificates/lookup", json=lookup)
        assert found.status == 200 and (await found.json())["hc1"].startswith("HC1:")


# -- start-up -------------------------------------------------------------------------------------------------

async def test_ingest_refuses_to_start_with_a_loose_key_folder_or_secret(make_settings):
    settings = make_settings()
    keys = KeyStore(settings.signing_keys_dir)
    keys.create()
    os.chmod(keys.directory, 0o755)
    with pytest.raises(KeyPermissions, match="chmod 700"):
        async with ingest_app(settings):
            pass
    os.chmod(keys.directory, 0o700)
    server_secret(settings)
    os.chmod(settings.data_dir / SECRET_FILE, 0o644)
    with pytest.raises(LooseMode, match="chmod 600"):
        async with ingest_app(settings):
            pass


async def test_a_malformed_trusted_proxies_setting_stops_ingest_at_start_and_is_parsed_once(make_settings):
    with pytest.raises(ValueError, match="'nonsense'"):
        async with ingest_app(make_settings(trusted_proxies="10.0.0.0/8, nonsense")):
            pass
    async with ingest_app(make_settings(trusted_proxies="10.0.0.0/8, 192.0.2.1")) as app:
        assert [str(n) for n in app[TRUSTED_PROXIES]] == ["10.0.0.0/8", "192.0.2.1/32"]


def test_serve_refuses_a_malformed_trusted_proxies_setting_with_exit_2(tmp_path, settings):
    env = {**settings.to_env(), "VAXLINE_TRUSTED_PROXIES": "10.0.0.0/8, 10.0.0.300"}
    served = cli(tmp_path, "serve", "--port", "1", env=env)
    assert served.returncode == 2 and "'10.0.0.300'" in served.stderr, served.stderr
    assert "Traceback" not in served.stderr


def test_serve_refuses_a_server_secret_open_to_others_with_exit_2(tmp_path, settings):
    server_secret(settings)
    path = settings.data_dir / SECRET_FILE
    os.chmod(path, 0o640)
    served = cli(settings.data_dir, "serve", "--port", "1", env=settings.to_env())
    assert served.returncode == 2 and str(path) in served.stderr and "chmod 600" in served.stderr, served.stderr


def test_run_refuses_a_loose_key_folder_before_starting_anything(tmp_path):
    keys = KeyStore(tmp_path / "keys")
    keys.create()
    os.chmod(keys.directory, 0o755)
    ran = cli(tmp_path, "run", "--port", "1")
    assert ran.returncode == 2 and "chmod 700" in ran.stderr, ran.stderr
    assert not (tmp_path / "postgres").exists()  # refused before the embedded Postgres was started


# -- the server secret ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660])
def test_a_server_secret_file_open_to_others_is_refused(settings, loose):
    secret = server_secret(settings)
    path = settings.data_dir / SECRET_FILE
    os.chmod(path, loose)
    with pytest.raises(LooseMode) as refused:
        server_secret(settings)
    message = str(refused.value)
    assert str(path) in message and f"{loose:04o}" in message and "chmod 600 " in message
    os.chmod(path, 0o600)
    assert server_secret(settings) == secret


@pytest.mark.parametrize("loose", [0o775, 0o757, 0o777])
def test_a_server_secret_in_a_folder_others_may_write_is_refused(settings, loose):
    folder = settings.data_dir
    os.chmod(folder, loose)
    try:
        with pytest.raises(LooseMode) as refused:
            server_secret(settings)  # not made there either
        message = str(refused.value)
        assert str(folder) in message and f"{loose:04o}" in message and "chmod go-w " in message
        assert not (folder / SECRET_FILE).exists()
    finally:
        os.chmod(folder, 0o700)
    assert server_secret(settings)


def test_a_secret_given_in_the_environment_needs_no_file(make_settings):
    settings = make_settings(server_secret="ab" * 16)
    os.chmod(settings.data_dir, 0o777)
    try:
        assert server_secret(settings) == bytes.fromhex("ab" * 16)
    finally:
        os.chmod(settings.data_dir, 0o700)
