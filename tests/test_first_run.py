"""The README's first run, as a new user types it: serve, one set-up command, a call.

Runs the shipped ``config.example.toml`` (only its port and database moved into a
temporary folder) with ``relay serve`` and the CLI as real processes, then checks the
wallet and the month's invoice against what the call cost.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from relay.money.pricing import micros_to_usd

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RELAY = Path(sys.executable).with_name("relay")
TOKEN = "first-run-admin-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _example_config(folder: Path, port: int) -> Path:
    text = (ROOT / "config.example.toml").read_text()
    text = text.replace('listen = "127.0.0.1:8787"', f'listen = "127.0.0.1:{port}"', 1)
    text = re.sub(r'^database = "relay.db"', 'database = "data/relay.db"', text, flags=re.M)
    path = folder / "relay.toml"
    path.write_text(text)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["RELAY_ADMIN_TOKEN"] = TOKEN
    return env


def _relay(*args: str, config: Path) -> Any:
    done = subprocess.run(
        [str(RELAY), *args, "-c", str(config), "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    port = _free_port()
    config = _example_config(tmp_path, port)
    server = subprocess.Popen(
        [str(RELAY), "serve", "-c", str(config)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert server.poll() is None, "relay serve exited during start-up"
            try:
                if httpx.get(f"{base_url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "relay serve did not start"
            time.sleep(0.05)
        yield config, base_url
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=20)
        assert server.returncode == 0, stderr.decode()


def test_a_new_user_gets_a_key_and_a_chat_in_three_commands(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    config, base_url = served
    created = _relay("account", "create", "demo", "--credit", "5", "--key", "app", config=config)
    secret = created["key"]["secret"]
    assert secret.startswith("rk_")
    assert created["credit"]["credited"] is True

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=secret, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="mock-gpt", messages=[{"role": "user", "content": "Hello"}]
    )
    cost = int(reply.headers["x-relay-cost-micros"])
    assert cost > 0
    assert reply.parse().choices[0].message.content

    wallet = _relay("wallet", "show", "demo", config=config)
    assert wallet["balance_micros"] == 5_000_000 - cost
    assert wallet["held_micros"] == 0
    assert wallet["mode"] == "prepaid"

    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    invoice = _relay("invoice", "demo", "--month", month, "--out", str(tmp_path), config=config)
    assert invoice["charges_micros"] == cost
    assert invoice["credits_micros"] == 5_000_000
    by_model = [line for line in invoice["lines"] if line["group"] == "model"]
    assert by_model == [
        {
            "group": "model",
            "name": "mock-gpt",
            "requests": 1,
            "prompt_tokens": by_model[0]["prompt_tokens"],
            "completion_tokens": by_model[0]["completion_tokens"],
            "cost_micros": cost,
        }
    ]
    html, csv = (Path(p) for p in invoice["files"])
    assert "mock-gpt" in html.read_text() and "Statement for" in html.read_text()
    assert csv.read_text().splitlines()[-1] == f"total,charges,,,,{micros_to_usd(cost)}"
