"""Throwaway PostgreSQL, Redis and nginx for the cluster tests (one of each engine per session).

``postgres_server`` runs ``initdb`` into a temporary folder and ``pg_ctl start`` on a free
127.0.0.1 port (its unix socket in the same folder), as the ``postgres`` user when the
tests run as root (initdb refuses root). ``redis_server`` runs ``redis-server`` on a free
127.0.0.1 port with persistence off. Both are stopped and deleted at the end of the session.

``run_nginx`` runs a throwaway nginx (its own prefix and config in a temporary folder,
listening on 127.0.0.1 only) that spreads requests round-robin over given relay ports, as a
load balancer in front of N cluster instances would (tests/test_cluster_nginx.py, and
scripts/bench's multi-instance targets).

Where an engine is not installed the tests that need it are skipped with the reason, unless
``RELAY_REQUIRE_CLUSTER_ENGINES=1`` (set by ``.ci/run``, which installs all three): then a
missing engine is a failure, so CI can never pass by skipping them.

``pg_database`` gives each test a fresh database (migrated by the test), ``redis_prefix``
a fresh key prefix, so tests never see each other's rows or keys.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import asyncpg
    import redis.asyncio  # noqa: F401  (the cluster extra: checked here, used by the tests)
except ImportError:  # the conftest imports this module: never fail the whole suite for it
    asyncpg = None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    data: str

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


@dataclass(frozen=True)
class RedisServer:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _missing(reason: str) -> None:
    if os.environ.get("RELAY_REQUIRE_CLUSTER_ENGINES") == "1":
        pytest.fail(f"{reason} (RELAY_REQUIRE_CLUSTER_ENGINES=1: CI must run these tests)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with run_postgres() as server:
        yield server


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a temporary folder; stopped and deleted on exit."""
    if asyncpg is None:
        _missing("the 'cluster' extra is not installed (pip install -e '.[cluster]')")
    bindir = _postgres_bin()
    if bindir is None:
        _missing("PostgreSQL is not installed (apt-get install postgresql)")
        return
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root and there is no 'postgres' user for initdb")
            return
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    data = root / "data"
    if run_as:
        shutil.chown(root, user=run_as)
    port = _free_port()
    user = "relay"
    subprocess.run(
        _as_user(run_as, [str(bindir / "initdb"), "-D", str(data), "-U", user, "-A", "trust"]),
        check=True,
        capture_output=True,
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200"
        " -c shared_buffers=64MB"
    )
    log = root / "server.log"
    subprocess.run(
        _as_user(
            run_as,
            [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w"]
            + ["-t", "60", "start"],
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user=user, data=str(data))
    finally:
        subprocess.run(
            _as_user(run_as, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with run_redis() as server:
        yield server


@contextlib.contextmanager
def run_redis() -> Iterator[RedisServer]:
    """redis-server on a free loopback port, persistence off; stopped on exit."""
    if asyncpg is None:
        _missing("the 'cluster' extra is not installed (pip install -e '.[cluster]')")
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("Redis is not installed (apt-get install redis-server)")
        return
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="relay-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", workdir, "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                _missing(f"redis-server did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield RedisServer(port=port, pid=proc.pid)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def pg_database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh, empty database for one test; its DSN."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(postgres_server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.dsn(name)
    admin = await asyncpg.connect(postgres_server.dsn())
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def redis_prefix(redis_server: RedisServer) -> str:
    """A key prefix no other test uses (the session's Redis is shared)."""
    return f"t{secrets.token_hex(4)}:"


@dataclass(frozen=True)
class NginxServer:
    port: int
    pid: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Streams pass through as they are produced (no buffering); a POST that reached an instance is
# never retried on another (nginx's default for non-idempotent methods), one whose connection
# was refused is (nothing was sent: an instance killed or not yet up costs no request).
_NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
{user}pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream relay {{
{servers}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://relay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 60s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
    )


@contextlib.contextmanager
def run_nginx(
    upstream_ports: list[int], port: int = 0, pin: list[str] | None = None
) -> Iterator[NginxServer]:
    """nginx on 127.0.0.1 (a free port unless given), round-robin over ``upstream_ports``.

    ``pin`` prefixes the command (``["taskset", "-c", "1"]``); stopped and deleted on exit.
    """
    binary = nginx_binary()
    if binary is None:
        _missing("nginx is not installed (apt-get install nginx)")
        return
    root = Path(tempfile.mkdtemp(prefix="relay-nginx-"))
    port = port or _free_port()
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstream_ports
    )
    user = ""
    if os.geteuid() == 0:  # the master hands its workers to an unprivileged user
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};\n"
        root.chmod(0o755)  # they reach the temporary folders below it
    conf = root / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(user=user, root=root, servers=servers, port=port))
    command = [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
    proc = subprocess.Popen(
        [*(pin or []), *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (root / "error.log").read_text(errors="replace") if root.exists() else ""
                raise RuntimeError(f"nginx did not start on 127.0.0.1:{port}: {log[-500:]}")
            time.sleep(0.05)
        yield NginxServer(port=port, pid=proc.pid, root=root)
    finally:
        proc.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
