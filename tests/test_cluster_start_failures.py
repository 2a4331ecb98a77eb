"""A cluster-mode `relay serve` that cannot start leaves nothing behind.

In cluster mode the local SQLite is a scratch file in a folder of its own under the
temporary directory (relay.state_lifecycle). Real `relay serve` subprocesses, each with its
own TMPDIR, fail at start-up in different places; each must exit non-zero with a clean
error and leave that TMPDIR empty.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("asyncpg")
pytest.importorskip("redis")

pytestmark = [pytest.mark.subprocess]


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(folder: Path, dsn: str, redis_url: str) -> tuple[int, str, list[Path]]:
    """Run `relay serve` to its exit: (exit code, stderr, what it left in its TMPDIR)."""
    scratch_root = folder / "tmp"
    scratch_root.mkdir()
    config = folder / "relay.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:8787"\ndatabase = "relay.db"\n'
        f'[storage]\nurl = "{dsn}"\n[cluster]\nredis_url = "{redis_url}"\n'
    )
    argv = [sys.executable, "-m", "relay.cli", "serve", "-c", str(config)]
    argv += ["--listen", f"127.0.0.1:{_closed_port()}"]
    done = subprocess.run(
        argv,
        cwd=folder,
        env={**os.environ, "TMPDIR": str(scratch_root)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr.decode(), sorted(scratch_root.rglob("*"))


def test_an_unreachable_postgresql_fails_cleanly_and_leaves_no_scratch_folder(
    tmp_path: Path,
) -> None:
    port = _closed_port()
    code, stderr, left = _serve(
        tmp_path, f"postgresql://relay@127.0.0.1:{port}/relay", f"redis://127.0.0.1:{port}/0"
    )
    assert code != 0 and "could not start" in stderr and "Connection refused" in stderr, stderr
    assert left == []


def test_an_unreachable_redis_fails_cleanly_and_leaves_no_scratch_folder(
    tmp_path: Path, pg_database: str
) -> None:
    """PostgreSQL answers (migrations, the lease, the accounts): the scratch file exists by
    the time Redis is first dialled."""
    code, stderr, left = _serve(tmp_path, pg_database, f"redis://127.0.0.1:{_closed_port()}/0")
    assert code != 0 and "could not start" in stderr and "redis" in stderr.lower(), stderr
    assert left == []


def test_a_failure_after_the_scratch_file_opened_removes_its_folder(
    tmp_path: Path, pg_database: str
) -> None:
    """The server secret cannot be read (a folder where the file should be): start-up fails
    after the runtime and the scratch database opened, and both are undone."""
    (tmp_path / "relay.db.secret").mkdir()
    code, stderr, left = _serve(tmp_path, pg_database, f"redis://127.0.0.1:{_closed_port()}/0")
    assert code != 0 and "IsADirectoryError" in stderr, stderr
    assert left == []
