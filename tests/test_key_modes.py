"""Signing key files (issue 16, item 11): a folder or key open to other users is refused on load.

Covers: `vaxline keys init` creates the folder 0700 and the key 0600 even under a permissive umask; loading
(the trust list, the signing key) refuses a folder looser than 0700, a private key looser than 0600 and a
DSC others may write, with an error naming the path, its mode and the chmod that fixes it; `vaxline keys
list` and `vaxline serve` exit 2 with that message; after the chmod the keys load again.
"""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tests.conftest import ROOT
from tests.test_cli import VAXLINE
from vaxline.dcc.keys import KeyPermissions, KeyStore


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def cli(data_dir, *args, env=None, umask: int | None = None):
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run([*VAXLINE, "--data-dir", str(data_dir), *args], cwd=ROOT, env={**environment, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def test_keys_init_creates_an_owner_only_folder_and_key(tmp_path):
    done = cli(tmp_path, "keys", "init", umask=0o000)  # the loosest umask: the modes are set, not inherited
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "keys"
    assert mode(folder) == 0o700
    [key] = folder.glob("*.key")
    assert mode(key) == 0o600
    assert all(mode(crt) == 0o644 for crt in folder.glob("*.crt"))
    assert KeyStore(folder).signing_key()


@pytest.mark.parametrize("what, loose", [("folder", 0o755), ("folder", 0o710), ("key", 0o640), ("key", 0o604),
                                         ("crt", 0o664)])
def test_looser_modes_are_refused_on_load(tmp_path, what, loose):
    keys = KeyStore(tmp_path / "keys")
    public = keys.create()
    path = {"folder": keys.directory, "key": keys.directory / f"{public.kid.hex()}.key",
            "crt": keys.directory / f"{public.kid.hex()}.crt"}[what]
    os.chmod(path, loose)
    for load in (keys.public_keys, keys.signing_key, keys.ensure):
        with pytest.raises(KeyPermissions) as refused:
            load()
        message = str(refused.value)
        assert str(path) in message and f"{loose:04o}" in message and "chmod" in message
    fixed = {"folder": 0o700, "key": 0o600, "crt": 0o644}[what]
    assert f"chmod {fixed:o} " in message
    os.chmod(path, fixed)
    assert keys.signing_key().kid == public.kid


def test_the_commands_refuse_a_loose_folder_with_exit_2(tmp_path, settings):
    keys = KeyStore(tmp_path / "keys")
    keys.create()
    os.chmod(keys.directory, 0o755)
    listed = cli(tmp_path, "keys", "list")
    assert listed.returncode == 2 and "0755" in listed.stderr and "chmod 700" in listed.stderr, listed.stderr
    assert "Traceback" not in listed.stderr
    env = {**settings.to_env(), "VAXLINE_KEYS_DIR": str(keys.directory)}
    served = cli(tmp_path, "serve", "--port", "1", env=env)
    assert served.returncode == 2 and "chmod 700" in served.stderr, served.stderr
