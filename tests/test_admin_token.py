"""The admin token: a minimum length at start-up, wrong guesses throttled per client IP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN, config_text, make_config
from support_accounts import Relay, run_relay

from relay.cli.entry import main
from relay.http.admin_throttle import MAX_FAILURES
from relay.identity.admin_token import MIN_ADMIN_TOKEN_CHARS


def test_relay_serve_refuses_a_short_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(config_text(tmp_path / "relay.db"))
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "x")
    assert main(["serve", "-c", str(config)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RELAY_ADMIN_TOKEN" in err and "too short" in err
    assert str(MIN_ADMIN_TOKEN_CHARS) in err
    assert not (tmp_path / "relay.db").exists()  # refused before anything started


def test_the_tests_admin_token_is_long_enough() -> None:
    assert len(ADMIN_TOKEN) >= MIN_ADMIN_TOKEN_CHARS


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    config = make_config(tmp_path, server_extra='trusted_proxies = ["127.0.0.1"]')
    async with run_relay(config) as served:
        yield served


def bearer(token: str, client: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}"}
    if client is not None:
        headers["x-forwarded-for"] = client
    return headers


async def test_wrong_admin_tokens_are_throttled_per_client(relay: Relay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as anon:
        for _ in range(MAX_FAILURES):
            wrong = await anon.get("/admin/accounts", headers=bearer("guess-" * 4, "203.0.113.7"))
            assert wrong.status_code == 401
        # Locked out: even the right token from that client waits, on the data plane too.
        locked = await anon.get("/admin/accounts", headers=bearer(ADMIN_TOKEN, "203.0.113.7"))
        assert locked.status_code == 429, locked.text
        assert locked.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(locked.headers["retry-after"]) > 0
        data_plane = await anon.get("/v1/models", headers=bearer("guess-" * 4, "203.0.113.7"))
        assert data_plane.status_code == 429
        # Another client behind the same trusted proxy is not affected.
        other = await anon.get("/admin/accounts", headers=bearer(ADMIN_TOKEN, "198.51.100.2"))
        assert other.status_code == 200, other.text


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    tmp_path: Path, admin_token: str
) -> None:
    async with run_relay(make_config(tmp_path)) as relay:
        async with httpx.AsyncClient(base_url=relay.base_url) as anon:
            for n in range(MAX_FAILURES):
                # A guesser cannot escape the lockout by inventing a new address each time.
                spoofed = bearer("guess-" * 4, f"192.0.2.{n}")
                assert (await anon.get("/admin/accounts", headers=spoofed)).status_code == 401
            locked = await anon.get("/admin/accounts", headers=bearer(ADMIN_TOKEN, "192.0.2.99"))
            assert locked.status_code == 429


async def test_relay_keys_and_the_right_token_are_never_counted(relay: Relay) -> None:
    _, key = await relay.funded_key("acme")
    async with httpx.AsyncClient(base_url=relay.base_url) as anon:
        for _ in range(MAX_FAILURES + 2):
            ok = await anon.get("/admin/accounts", headers=bearer(ADMIN_TOKEN, "203.0.113.8"))
            assert ok.status_code == 200
            as_key = await anon.get("/v1/key", headers=bearer(key["secret"], "203.0.113.8"))
            assert as_key.status_code == 200
