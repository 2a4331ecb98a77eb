"""``relay serve`` under uvicorn (``[server] http_server = "uvicorn"``) as a real process.

The same checks as ``test_server.py`` runs under hypercorn: answers, a graceful SIGTERM
mid-stream that keeps the usage row, one-line start-up errors; plus TLS and the
message when the optional ``relay[uvicorn]`` extra is missing.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN, CHAT_BODY
from test_server import (
    check_port_in_use_exits_with_one_line,
    check_signal_mid_stream,
    free_port,
    serve_until_exit,
    start_relay,
    stop_relay,
    usage_rows,
    wait_until_serving,
    write_config,
)

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

UVICORN = 'http_server = "uvicorn"'


async def test_answers_health_and_a_chat_under_uvicorn(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "relay.log").open("wb")
    process = await start_relay(write_config(tmp_path, port, server_extra=UVICORN), log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        health = await wait_until_serving(base_url, process)
        assert health.headers["server"] == "uvicorn"
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
            response = await client.post("/v1/chat/completions", json=CHAT_BODY)
            assert response.status_code == 200
            body = response.json()
            assert body["choices"][0]["message"]["content"]
            assert body["metadata"]["executed_model"] == "mock-gpt"
            assert response.headers["x-relay-request-id"] == body["metadata"]["request_id"]
        assert await stop_relay(process) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    assert "Traceback" not in (tmp_path / "relay.log").read_text()
    [row] = usage_rows(tmp_path / "data.db")  # drained at shutdown
    assert (row["model"], row["status"]) == ("mock-gpt", 200)


async def test_sigterm_mid_stream_under_uvicorn_exits_in_the_grace_period(
    tmp_path: Path,
) -> None:
    await check_signal_mid_stream(tmp_path, server_extra=UVICORN)


async def test_a_second_ctrl_c_under_uvicorn_still_drains_the_database(tmp_path: Path) -> None:
    # uvicorn's own handlers would force the exit and skip the lifespan shutdown.
    sigints = (signal.SIGINT, signal.SIGINT)
    await check_signal_mid_stream(tmp_path, server_extra=UVICORN, signals=sigints)


def test_a_port_in_use_under_uvicorn_exits_with_one_line(tmp_path: Path) -> None:
    check_port_in_use_exits_with_one_line(tmp_path, server_extra=UVICORN)


def test_a_start_up_failure_under_uvicorn_exits_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'database = "not-a-folder/relay.db"\n{UVICORN}\n'
    )
    result = serve_until_exit(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("relay: could not start: ") and "not-a-folder" in last


async def test_serves_https_under_uvicorn(tmp_path: Path) -> None:
    _self_signed_certificate(tmp_path)
    tls = 'tls_cert = "cert.pem"\ntls_key = "key.pem"'
    port = free_port()
    config = write_config(tmp_path, port, server_extra=f"{UVICORN}\n{tls}")
    log = (tmp_path / "relay.log").open("wb")
    process = await start_relay(config, log)
    trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    try:
        health = await wait_until_serving(f"https://127.0.0.1:{port}", process, verify=trust)
        assert health.headers["server"] == "uvicorn"
        assert await stop_relay(process) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


def test_without_the_uvicorn_extra_serve_says_what_to_install(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), server_extra=UVICORN)
    # uvicorn is installed here: make it unimportable in the child, as when it is missing.
    code = "import sys; sys.modules['uvicorn'] = None; from relay.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "relay: server.http_server = \"uvicorn\" needs uvicorn: pip install 'relay[uvicorn]'"
    ]
    assert not (tmp_path / "data.db").exists()


def _self_signed_certificate(folder: Path) -> None:
    """cert.pem and key.pem for 127.0.0.1, made offline by the openssl command."""
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        str(folder / "key.pem"),
        "-out",
        str(folder / "cert.pem"),
    ]
    subprocess.run(command, capture_output=True, check=True, timeout=30)
