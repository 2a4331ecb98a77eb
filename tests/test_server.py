"""``relay serve`` as a real process: start-up, and a graceful SIGTERM that drains writes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN, CHAT_BODY, mock_upstream

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / ".venv" / "bin" / "relay"
GRACE_S = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_config(folder: Path, port: int, upstream_url: str) -> Path:
    path = folder / "relay.toml"
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
database = "data.db"
shutdown_grace_s = {GRACE_S}
flush_interval_ms = 50

[[providers]]
name = "fake"
kind = "openai"
base_url = "{upstream_url}"
api_keys = ["key-a"]

[[models]]
name = "fake-gpt"
routes = ["fake:gpt-4o-mini"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"
"""
    )
    return path


async def _wait_until_serving(base_url: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        for _ in range(300):
            if process.returncode is not None:
                raise AssertionError(f"relay serve exited with {process.returncode}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError("relay serve did not start")


def _usage_rows(database: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM usage")]


async def test_sigterm_mid_stream_exits_in_the_grace_period_and_keeps_the_usage_row(
    tmp_path: Path,
) -> None:
    options = mock_upstream.MockOptions(chunk_delay_ms=100, stream_chunks=200)
    upstream = await mock_upstream.start(port=0, options=options)
    port = _free_port()
    config = _write_config(tmp_path, port, upstream.base_url)
    log = (tmp_path / "relay.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        str(RELAY),
        "serve",
        "-c",
        str(config),
        env={**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN},
        stdout=log,
        stderr=log,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        await _wait_until_serving(base_url, process)
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        body = {**CHAT_BODY, "model": "fake-gpt", "stream": True}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                chunks = response.aiter_raw()
                assert b"data: " in await anext(chunks)
                process.send_signal(signal.SIGTERM)
                sent_at = time.monotonic()
                # The stream ends (cut at the end of the grace period); it must not hang.
                with pytest.raises(httpx.RemoteProtocolError):
                    async for _ in chunks:
                        pass
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
    [row] = _usage_rows(tmp_path / "data.db")  # relative to the config file's folder
    assert row["stream"] == 1 and row["model"] == "fake-gpt"
    assert row["usage_estimated"] == 1 and row["completion_tokens"] >= 1


def _serve_until_exit(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
    command = [str(RELAY), "serve", "-c", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)


def test_serve_with_a_bad_config_exits_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten = 8787\n")
    result = _serve_until_exit(bad)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.listen" in lines[0]
    assert not (tmp_path / "relay.db").exists()


def test_a_start_up_failure_exits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{_free_port()}"\ndatabase = "not-a-folder/relay.db"\n'
    )
    result = _serve_until_exit(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("relay: could not start: ")
