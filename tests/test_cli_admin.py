"""The management commands against a fake admin API (httpx.MockTransport)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.cli import client as cli_client
from relay.cli import format as cli_format
from relay.cli.entry import main
from relay.config import ServerConfig

TOKEN = "admin-secret-token"
ACCOUNT = {
    "id": "acc_1",
    "name": "acme",
    "mode": "postpaid",
    "status": "active",
    "credit_limit_micros": 100_000_000,
    "rpm": 60,
    "tpm": 0,
    "concurrency": 10,
    "price_multiplier": "1",
    "created_at": "2026-01-02T03:04:05Z",
    "balance_micros": 12_500_000,
    "held_micros": 250_000,
    "available_micros": 112_250_000,
}
KEY = {
    "id": "k1",
    "account_id": "acc_1",
    "name": "ci",
    "masked": "rk_k1_\u2026abcd",
    "models": ["gpt-4o-mini"],
    "endpoints": [],
    "spend_cap_micros": 0,
    "spent_micros": 1_500_000,
    "rpm": 0,
    "tpm": 0,
    "concurrency": 100,
    "expires_at": None,
    "status": "active",
    "created_at": "2026-01-02T03:04:05Z",
    "last_used_at": None,
}
SECRET = "rk_k1_0123456789abcdefghijklmnopqrstuvwxyzabcd"
WALLET = {
    "account_id": "acc_1",
    "balance_micros": 10_000_000,
    "held_micros": 0,
    "available_micros": 10_000_000,
    "credit_limit_micros": 0,
    "mode": "prepaid",
    "balance_usd": "10",
    "available_usd": "10",
}
ENTRY = {
    "id": 7,
    "account_id": "acc_1",
    "kind": "credit",
    "amount_micros": 10_000_000,
    "reference": "INV-1",
    "key_id": None,
    "request_id": None,
    "note": "first",
    "created_at": "2026-01-02T03:04:05Z",
}


class FakeAdmin:
    """Canned answers per (method, raw path); records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: dict[tuple[str, str], httpx.Response] = {}

    def answer(self, method: str, path: str, status: int = 200, body: Any = None) -> None:
        self.answers[(method, path)] = httpx.Response(status, json=body)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.raw_path.decode().partition("?")[0]
        not_found = {"error": {"message": f"no route {path}", "type": "x", "code": "not_found"}}
        return self.answers.get((request.method, path), httpx.Response(404, json=not_found))

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_body(self) -> Any:
        return json.loads(self.last.content)


Relay = Callable[..., int]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:9911"\n', encoding="utf-8")
    return path


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeAdmin:
    admin = FakeAdmin()
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", TOKEN)
    return admin


@pytest.fixture
def relay(config: Path, fake: FakeAdmin) -> Relay:
    def run(*argv: str) -> int:
        return main([*argv, "-c", str(config)], transport=httpx.MockTransport(fake))

    return run


def _json_out(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


# --- accounts ----------------------------------------------------------------------------


def test_account_create_sends_options_and_bearer_token(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("POST", "/admin/accounts", 201, ACCOUNT)
    argv = ["--postpaid", "--credit-limit", "100", "--rpm", "60", "--concurrency", "10"]
    assert relay("account", "create", "acme", *argv, "--json") == 0
    request = fake.last
    assert request.method == "POST"
    assert str(request.url) == "http://127.0.0.1:9911/admin/accounts"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert fake.last_body() == {
        "name": "acme",
        "mode": "postpaid",
        "credit_limit_usd": "100",
        "rpm": 60,
        "concurrency": 10,
    }
    out = _json_out(capsys)
    assert (out["id"], out["name"]) == ("acc_1", "acme")


def test_account_create_human_output_shows_usd(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("POST", "/admin/accounts", 201, ACCOUNT)
    assert relay("account", "create", "acme") == 0
    assert fake.last_body() == {"name": "acme"}
    out = capsys.readouterr().out
    assert out.startswith("Created account acme.")
    assert "balance:           12.5\n" in out
    assert "credit limit:      100\n" in out
    assert "tpm:               unlimited\n" in out


def test_account_list_table(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    other = {**ACCOUNT, "id": "acc_22", "name": "globex", "mode": "prepaid", "balance_micros": 5}
    fake.answer("GET", "/admin/accounts", body={"data": [ACCOUNT, other]})
    assert relay("account", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "MODE",
        "STATUS",
        "BALANCE",
        "AVAILABLE",
        "CREDIT",
        "LIMIT",
    ]
    assert lines[1].split() == ["acc_1", "acme", "postpaid", "active", "12.5", "112.25", "100"]
    assert lines[2].split()[:5] == ["acc_22", "globex", "prepaid", "active", "0.000005"]
    assert lines[1].index("acme") == lines[2].index("globex") == lines[0].index("NAME")


def test_account_list_json_and_empty(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", "/admin/accounts", body={"data": [ACCOUNT]})
    assert relay("account", "list", "--json") == 0
    assert _json_out(capsys) == [ACCOUNT]
    fake.answer("GET", "/admin/accounts", body={"data": []})
    assert relay("account", "list") == 0
    assert capsys.readouterr().out == "no accounts\n"


def test_account_show_quotes_the_name(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", "/admin/accounts/big%20co%2Fx", body=ACCOUNT)
    assert relay("account", "show", "big co/x") == 0
    assert "id:                acc_1\n" in capsys.readouterr().out


@pytest.mark.parametrize(("action", "status"), [("suspend", "suspended"), ("activate", "active")])
def test_account_status_changes(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str], action: str, status: str
) -> None:
    fake.answer("PATCH", "/admin/accounts/acme", body={**ACCOUNT, "status": status})
    assert relay("account", action, "acme") == 0
    assert fake.last_body() == {"status": status}
    assert capsys.readouterr().out == f"Account acme is {status}.\n"


def test_account_update_sends_only_given_options(fake: FakeAdmin, relay: Relay) -> None:
    fake.answer("PATCH", "/admin/accounts/acme", body=ACCOUNT)
    argv = ["--prepaid", "--rpm", "0", "--name", "acme2", "--price-multiplier", "0.8"]
    assert relay("account", "update", "acme", *argv) == 0
    assert fake.last_body() == {
        "mode": "prepaid",
        "rpm": 0,
        "name": "acme2",
        "price_multiplier": "0.8",
    }


def test_account_update_without_options_fails_without_a_request(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    assert relay("account", "update", "acme") == 1
    assert capsys.readouterr().err.startswith("relay: nothing to update")
    assert fake.requests == []


# --- keys --------------------------------------------------------------------------------


def test_key_create_json_has_id_and_secret(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("POST", "/admin/accounts/acme/keys", 201, {**KEY, "secret": SECRET})
    argv = ["--name", "ci", "--models", "gpt-4o-mini, claude", "--endpoints", "chat,embeddings"]
    argv += ["--spend-cap", "5", "--tpm", "1000", "--expires", "2027-01-31", "--json"]
    assert relay("key", "create", "acme", *argv) == 0
    assert fake.last_body() == {
        "name": "ci",
        "models": ["gpt-4o-mini", "claude"],
        "endpoints": ["chat", "embeddings"],
        "spend_cap_usd": "5",
        "tpm": 1000,
        "expires": "2027-01-31",
    }
    out = _json_out(capsys)
    assert (out["id"], out["secret"]) == ("k1", SECRET)


def test_key_create_prints_the_secret_once_on_its_own_line(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("POST", "/admin/accounts/acme/keys", 201, {**KEY, "secret": SECRET})
    assert relay("key", "create", "acme", "--name", "ci") == 0
    out = capsys.readouterr().out
    assert out.count(SECRET) == 1
    assert SECRET in out.splitlines()
    assert "shown only once" in out


def test_key_create_needs_a_name(fake: FakeAdmin, relay: Relay) -> None:
    with pytest.raises(SystemExit) as exit_info:
        relay("key", "create", "acme")
    assert exit_info.value.code == 2
    assert fake.requests == []


def test_key_list_of_one_account_shows_masked_keys(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", "/admin/keys", body={"data": [KEY]})
    assert relay("key", "list", "acme") == 0
    assert fake.last.url.params["account"] == "acme"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "ACCOUNT", "KEY"]
    row = ["k1", "ci", "acc_1", KEY["masked"], "active", "1.5", "unlimited", "never"]
    assert lines[1].split() == row


def test_key_list_all_sends_no_account(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", "/admin/keys", body={"data": []})
    assert relay("key", "list") == 0
    assert "account" not in fake.last.url.params
    assert capsys.readouterr().out == "no keys\n"


def test_key_show_and_revoke(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", "/admin/keys/k1", body=KEY)
    assert relay("key", "show", "k1") == 0
    out = capsys.readouterr().out
    assert "models:       gpt-4o-mini\n" in out
    assert "endpoints:    all\n" in out
    fake.answer("POST", "/admin/keys/k1/revoke", body={**KEY, "status": "revoked"})
    assert relay("key", "revoke", "k1", "--json") == 0
    assert fake.last.method == "POST"
    assert _json_out(capsys)["status"] == "revoked"


def test_key_update_can_clear_expiry_and_models(fake: FakeAdmin, relay: Relay) -> None:
    fake.answer("PATCH", "/admin/keys/k1", body=KEY)
    assert relay("key", "update", "k1", "--never-expires", "--models", "", "--rpm", "5") == 0
    assert fake.last_body() == {"expires": None, "models": [], "rpm": 5}


@pytest.mark.parametrize(
    "argv",
    [
        ["--expires", "31/01/2027"],
        ["--spend-cap", "1.0000001"],
        ["--rpm", "-1"],
        ["--expires", "2027-01-31", "--never-expires"],
    ],
)
def test_key_update_refuses_bad_options(fake: FakeAdmin, relay: Relay, argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        relay("key", "update", "k1", *argv)
    assert fake.requests == []


# --- wallet ------------------------------------------------------------------------------


def test_wallet_credit(fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"credited": True, "entry": ENTRY, "wallet": WALLET}
    fake.answer("POST", "/admin/accounts/acme/credits", 201, answer)
    assert relay("wallet", "credit", "acme", "10.50", "--reference", "INV-1", "--note", "hi") == 0
    assert fake.last_body() == {"amount_usd": "10.50", "reference": "INV-1", "note": "hi"}
    out = capsys.readouterr().out
    assert out.startswith("Credited 10.5 USD to acme (reference INV-1).")
    assert "available:     10\n" in out


def test_wallet_credit_twice_says_already_credited(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {"credited": False, "entry": ENTRY, "wallet": WALLET}
    fake.answer("POST", "/admin/accounts/acme/credits", 200, answer)
    assert relay("wallet", "credit", "acme", "10", "--reference", "INV-1") == 0
    assert fake.last_body() == {"amount_usd": "10", "reference": "INV-1"}
    assert capsys.readouterr().out.startswith("Already credited")
    assert relay("wallet", "credit", "acme", "10", "--reference", "INV-1", "--json") == 0
    assert _json_out(capsys)["credited"] is False


def test_wallet_show_json_contract(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", "/admin/accounts/acme/wallet", body=WALLET)
    assert relay("wallet", "show", "acme", "--json") == 0
    out = _json_out(capsys)
    for field in ("balance_micros", "held_micros", "available_micros", "credit_limit_micros"):
        assert isinstance(out[field], int)
    assert out["mode"] == "prepaid"


def test_wallet_ledger(fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/admin/accounts/acme/ledger", body={"data": [ENTRY]})
    assert relay("wallet", "ledger", "acme", "--limit", "5") == 0
    assert dict(fake.last.url.params) == {"limit": "5"}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "KIND", "AMOUNT", "REFERENCE", "KEY", "NOTE"]
    assert lines[1].split() == ["7", ENTRY["created_at"], "credit", "10", "INV-1", "-", "first"]


# --- connection, token and errors --------------------------------------------------------


def test_server_error_message_is_relayed_on_one_line(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"message": "account 'nope'\nnot found", "type": "invalid_request_error"}
    fake.answer("GET", "/admin/accounts/nope", 404, {"error": {**error, "code": "not_found"}})
    assert relay("account", "show", "nope") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "relay: account 'nope' not found\n"
    assert TOKEN not in captured.err


def test_non_json_error_answer(
    fake: FakeAdmin, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answers[("GET", "/admin/accounts")] = httpx.Response(502, text="<html>bad gateway")
    assert relay("account", "list") == 1
    assert capsys.readouterr().err == "relay: relay answered HTTP 502\n"


def test_missing_admin_token(
    fake: FakeAdmin,
    relay: Relay,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("RELAY_ADMIN_TOKEN")
    assert relay("account", "list") == 1
    assert capsys.readouterr().err.startswith("relay: set RELAY_ADMIN_TOKEN ")
    assert fake.requests == []


def test_token_env_and_url_come_from_the_config(
    fake: FakeAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "other.toml"
    config.write_text(
        '[server]\nlisten = "0.0.0.0:7000"\nadmin_token_env = "MY_TOKEN"\n', encoding="utf-8"
    )
    monkeypatch.setenv("MY_TOKEN", "t2")
    fake.answer("GET", "/admin/accounts", body={"data": []})
    transport = httpx.MockTransport(fake)
    assert main(["account", "list", "-c", str(config)], transport=transport) == 0
    assert str(fake.last.url) == "http://127.0.0.1:7000/admin/accounts"
    assert fake.last.headers["authorization"] == "Bearer t2"
    fake.answer("GET", "/x/admin/accounts", body={"data": []})
    argv = ["account", "list", "-c", str(config), "--url", "https://relay.example/x/"]
    assert main(argv, transport=transport) == 0
    assert str(fake.last.url) == "https://relay.example/x/admin/accounts"


def test_connection_refused_gives_one_line(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", TOKEN)
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert main(["account", "list", "-c", str(config), "--url", url]) == 1  # the real network
    assert capsys.readouterr().err == (
        f"relay: cannot reach relay at {url}: is `relay serve` running?\n"
    )


# --- helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "url"),
    [
        (ServerConfig(), "http://127.0.0.1:8787"),
        (
            ServerConfig(listen="0.0.0.0:80", tls_cert="c.pem", tls_key="k.pem"),
            "https://127.0.0.1:80",
        ),
        (ServerConfig(listen="[::]:8787"), "http://[::1]:8787"),
        (ServerConfig(listen="[fe80::1]:9"), "http://[fe80::1]:9"),
    ],
)
def test_admin_url(server: ServerConfig, url: str) -> None:
    assert cli_client.admin_url(server) == url


def test_format_table_aligns_columns() -> None:
    table = cli_format.format_table(["A", "LONG"], [["xyz", "1"], ["q", "22"]])
    assert table == "A    LONG\nxyz  1\nq    22"


def test_format_fields_aligns_values() -> None:
    assert cli_format.format_fields([("id", "1"), ("status", "x")]) == "id:      1\nstatus:  x"


# --- AdminClient ---------------------------------------------------------------------------


def test_admin_client_failures_never_show_the_token() -> None:
    def leak(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError(f"peer echoed {request.headers['authorization']}")

    client = cli_client.AdminClient("http://relay.test", TOKEN, transport=httpx.MockTransport(leak))
    with client, pytest.raises(cli_client.CommandError) as failure:
        client.call("GET", "/admin/accounts")
    assert TOKEN not in str(failure.value)
    assert str(failure.value).startswith("request to relay at http://relay.test failed: ")


def test_admin_client_streams_downloads() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/admin/archives/a.gz":
            return httpx.Response(200, content=b"archive-bytes")
        return httpx.Response(404, json={"error": {"message": "no such\n archive"}})

    transport = httpx.MockTransport(answer)
    with cli_client.AdminClient("http://relay.test/", TOKEN, transport=transport) as client:
        with client.stream("/admin/archives/a.gz") as response:
            assert b"".join(response.iter_bytes()) == b"archive-bytes"
        with pytest.raises(cli_client.CommandError, match="^no such archive$"):
            with client.stream("/admin/archives/b.gz"):
                pass
