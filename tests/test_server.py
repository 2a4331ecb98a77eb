"""``relay serve`` as a real process: start-up, and a graceful SIGTERM that drains writes.

These run under hypercorn (the default server); ``test_server_uvicorn.py`` runs the same
checks under uvicorn with the helpers below.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN, CHAT_BODY, config_text, mock_upstream

pytestmark = [pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / ".venv" / "bin" / "relay"
GRACE_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(
    folder: Path, port: int, *, upstream_url: str | None = None, server_extra: str = ""
) -> Path:
    """A config with the ``mock`` models (and ``fake-gpt`` at ``upstream_url``) on ``port``."""
    text = config_text(
        Path("data.db"),  # relative to the config file's folder
        upstream_url=upstream_url,
        server_extra=f"shutdown_grace_s = {GRACE_S}\n{server_extra}",
    )
    path = folder / "relay.toml"
    path.write_text(text.replace('"127.0.0.1:8787"', f'"127.0.0.1:{port}"'))
    return path


async def start_relay(config: Path, log: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(RELAY),
        "serve",
        "-c",
        str(config),
        env={**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN},
        stdout=log,
        stderr=log,
    )


async def wait_until_serving(
    base_url: str, process: asyncio.subprocess.Process, **client: Any
) -> httpx.Response:
    """The first 200 answer of ``/healthz``."""
    async with httpx.AsyncClient(base_url=base_url, **client) as http:
        for _ in range(300):
            if process.returncode is not None:
                raise AssertionError(f"relay serve exited with {process.returncode}")
            try:
                response = await http.get("/healthz")
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError("relay serve did not start")


async def stop_relay(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout=GRACE_S + 4)


def usage_rows(database: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM usage")]


def serve_until_exit(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
    command = [str(RELAY), "serve", "-c", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)


@contextmanager
def port_in_use() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


async def check_signal_mid_stream(
    tmp_path: Path, server_extra: str = "", signals: tuple[int, ...] = (signal.SIGTERM,)
) -> None:
    """A signal during a slow stream: exit 0 within the grace period, usage row kept."""
    options = mock_upstream.MockOptions(chunk_delay_ms=100, stream_chunks=200)
    upstream = await mock_upstream.start(port=0, options=options)
    port = free_port()
    config = write_config(tmp_path, port, upstream_url=upstream.base_url, server_extra=server_extra)
    log = (tmp_path / "relay.log").open("wb")
    process = await start_relay(config, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_serving(base_url, process)
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        body = {**CHAT_BODY, "model": "fake-gpt", "stream": True}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                chunks = response.aiter_raw()
                assert b"data: " in await anext(chunks)
                # The grace period runs from the first signal, so time is counted from it.
                sent_at = time.monotonic()
                for signum in signals:
                    process.send_signal(signum)
                    await asyncio.sleep(0.05)
                # At the end of the grace period the stream ends with an error event and
                # [DONE] (docs/architecture.md §4.2), so a client sees why it stopped.
                rest = b"".join([chunk async for chunk in chunks])
                assert b"server_shutdown" in rest and rest.rstrip().endswith(b"data: [DONE]")
                # It ran until the grace period was over, not cut at the signal.
                assert time.monotonic() - sent_at >= GRACE_S * 0.9
        code = await asyncio.wait_for(process.wait(), timeout=GRACE_S + 4)
        assert code == 0
        assert time.monotonic() - sent_at < GRACE_S + 3
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
        await upstream.close()
    assert upstream.stats.in_flight == 0
    output = (tmp_path / "relay.log").read_text()
    assert "Traceback" not in output
    [row] = usage_rows(tmp_path / "data.db")
    assert row["stream"] == 1 and row["model"] == "fake-gpt"
    assert row["usage_estimated"] == 1 and row["completion_tokens"] >= 1
    # The app learnt of the signal: the cut is the server's, not the client's leaving.
    assert (row["status"], row["error_code"]) == (503, "server_shutdown")


def check_port_in_use_exits_with_one_line(tmp_path: Path, server_extra: str = "") -> None:
    with port_in_use() as port:
        result = serve_until_exit(write_config(tmp_path, port, server_extra=server_extra))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"relay: could not start: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert not (tmp_path / "data.db").exists()  # refused before the app opened anything


async def test_sigterm_mid_stream_exits_in_the_grace_period_and_keeps_the_usage_row(
    tmp_path: Path,
) -> None:
    await check_signal_mid_stream(tmp_path)


async def test_serves_under_hypercorn_by_default(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "relay.log").open("wb")
    process = await start_relay(write_config(tmp_path, port), log)
    try:
        response = await wait_until_serving(f"http://127.0.0.1:{port}", process)
        assert response.headers["server"].startswith("hypercorn")
        assert await stop_relay(process) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


def test_a_port_in_use_exits_with_one_line(tmp_path: Path) -> None:
    check_port_in_use_exits_with_one_line(tmp_path)


def test_an_unreadable_tls_certificate_exits_with_one_line(tmp_path: Path) -> None:
    extra = 'tls_cert = "missing.pem"\ntls_key = "missing-key.pem"'
    result = serve_until_exit(write_config(tmp_path, free_port(), server_extra=extra))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("relay: could not start: server.tls_cert/tls_key: ")
    assert "No such file" in line


def test_serve_with_a_bad_config_exits_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 8787\n")
    result = serve_until_exit(bad)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.listen" in lines[0]
    assert not (tmp_path / "relay.db").exists()


def test_an_unknown_http_server_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), server_extra='http_server = "gunicorn"')
    result = serve_until_exit(config)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "server.http_server" in line


def test_a_start_up_failure_exits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\ndatabase = "not-a-folder/relay.db"\n'
    )
    result = serve_until_exit(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("relay: could not start: ")
