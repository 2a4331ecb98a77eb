"""Every data-plane route in cluster mode, on the real PostgreSQL and Redis (in process).

relay serves the shipped example config's ``mock`` models (offline) with ``[storage] url``
and ``[cluster] redis_url`` set, so each billable route goes through the cluster admitter:
a Redis slot, a PostgreSQL hold, exactly one settlement by the settler with the usage row
in the same transaction. Each check reads PostgreSQL directly: no hold left, balance =
ledger sum, the usage row present with the cost the ledger charged. Then each route is
made to raise after admission (the upstream client raises a plain ``RuntimeError``): the
hold is released exactly once, nothing is charged, and the 500 has its usage row.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN, serve_relay

from relay.cluster.pg_usage import insert_usage, response_provider
from relay.config import Config, ProviderConfig, parse_config
from relay.upstream.client import Timeouts, UpstreamClient, UpstreamResponse
from relay.upstream.providers import ClientFactory, default_client_factory
from relay.usage.log import UsageRecord

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

ROOT = Path(__file__).resolve().parents[1]
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _wav(seconds: int, rate: int = 8_000) -> bytes:
    frames = rate * seconds
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    head = b"RIFF" + struct.pack("<I", 36 + frames) + b"WAVE"
    head += b"fmt " + struct.pack("<I", 16) + fmt
    return head + b"data" + struct.pack("<I", frames) + b"\x80" * frames


_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass(frozen=True)
class Call:
    """One route's request: JSON or a multipart form; ``stream``: an SSE/audio body."""

    endpoint: str
    path: str
    json: Mapping[str, Any] | None = None
    form: Mapping[str, str] | None = None
    files: Mapping[str, tuple[str, bytes, str]] | None = None
    stream: bool = False


CALLS = [
    Call("completions", "/v1/completions", json={"model": "mock-gpt", "prompt": "hi"}),
    Call(
        "completions",
        "/v1/completions",
        json={"model": "mock-gpt", "prompt": "hi", "stream": True},
        stream=True,
    ),
    Call("moderations", "/v1/moderations", json={"model": "mock-moderation", "input": "hi"}),
    Call("responses", "/v1/responses", json={"model": "mock-gpt", "input": "Hello"}),
    Call(
        "responses",
        "/v1/responses",
        json={"model": "mock-gpt", "input": "Hello", "stream": True},
        stream=True,
    ),
    Call(
        "transcriptions",
        "/v1/audio/transcriptions",
        form={"model": "mock-whisper"},
        files={"file": ("a.wav", _wav(2), "audio/wav")},
    ),
    Call(
        "translations",
        "/v1/audio/translations",
        form={"model": "mock-whisper"},
        files={"file": ("a.wav", _wav(3), "audio/wav")},
    ),
    Call(
        "speech",
        "/v1/audio/speech",
        json={"model": "mock-tts", "input": "Hello there", "voice": "alloy"},
        stream=True,
    ),
    Call(
        "image_edits",
        "/v1/images/edits",
        form={"model": "mock-image", "prompt": "a hat", "n": "2"},
        files={"image": ("in.png", _PNG, "image/png")},
    ),
]


class _Exploding:
    """The mock provider's client, raising a plain error (relay's bug, not the upstream's)
    while ``armed``: the request fails after admission, before any settlement."""

    def __init__(self, inner: UpstreamClient, switch: dict[str, bool]) -> None:
        self._inner = inner
        self._switch = switch

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        if self._switch["armed"]:
            raise RuntimeError("injected failure after admission")
        return await self._inner.send(method, url, headers=headers, body=body, timeouts=timeouts)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _factory(switch: dict[str, bool]) -> ClientFactory:
    def build(config: ProviderConfig) -> UpstreamClient:
        return _Exploding(default_client_factory(config), switch)

    return build


def _cluster_config(tmp_path: Path, dsn: str, redis_port: int) -> Config:
    text = (ROOT / "config.example.toml").read_text()
    text = text.replace('database = "relay.db"', f'database = "{tmp_path / "relay.db"}"', 1)
    db = 1 + secrets.randbelow(15)
    text += (
        f'\n[storage]\nurl = "{dsn}"\n'
        f'[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/{db}"\nlease_s = 3\n'
    )
    return parse_config(text, base_dir=str(tmp_path))


@dataclass
class Site:
    relay: Any
    conn: Any
    switch: dict[str, bool]
    account_id: str
    key_id: str
    secret: str

    async def send(self, call: Call) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.secret}"}
        client = self.relay.client
        files = dict(call.files) if call.files is not None else None
        request = client.build_request(
            "POST", call.path, json=call.json, data=call.form, files=files, headers=headers
        )
        response = await client.send(request, stream=call.stream)
        await response.aread()
        await response.aclose()
        return response

    async def settled(self, timeout_s: float = 10.0) -> None:
        """No hold of the account open any more (streams settle in the background)."""
        deadline = time.monotonic() + timeout_s
        while await self.conn.fetchval(
            "SELECT count(*) FROM holds WHERE account_id = $1", self.account_id
        ):
            assert time.monotonic() < deadline, "holds still open"
            await asyncio.sleep(0.02)
        await self.relay.state.admitter.committed()

    async def money(self) -> tuple[int, int, int]:
        row = await self.conn.fetchrow(
            "SELECT balance_micros, worst_micros FROM accounts WHERE id = $1", self.account_id
        )
        total = await self.conn.fetchval(
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE account_id = $1",
            self.account_id,
        )
        return int(row["balance_micros"]), int(total), int(row["worst_micros"])


@pytest.fixture
async def site(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> AsyncIterator[Site]:
    switch = {"armed": False}
    config = _cluster_config(tmp_path, pg_database, redis_server.port)
    async with serve_relay(config, client_factory=_factory(switch)) as relay:
        created = await relay.client.post("/admin/accounts", json={"name": "routes"})
        assert created.status_code == 201, created.text
        account_id = created.json()["id"]
        credit = {"amount_usd": "5", "reference": "seed"}
        credited = await relay.client.post(f"/admin/accounts/{account_id}/credits", json=credit)
        assert credited.status_code == 201, credited.text
        key = await relay.client.post(f"/admin/accounts/{account_id}/keys", json={"name": "k"})
        assert key.status_code == 201, key.text
        conn = await asyncpg.connect(pg_database)
        try:
            yield Site(relay, conn, switch, account_id, key.json()["id"], key.json()["secret"])
        finally:
            await conn.close()


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.endpoint}{'-stream' * c.stream}")
async def test_each_route_is_held_settled_once_and_recorded_in_postgresql(
    site: Site, call: Call
) -> None:
    response = await site.send(call)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-relay-request-id"]
    await site.settled()
    balance, ledger_sum, worst = await site.money()
    assert balance == ledger_sum and worst == 0
    row = await site.conn.fetchrow("SELECT * FROM usage WHERE request_id = $1", request_id)
    assert row is not None, "no usage row in PostgreSQL"
    assert (row["endpoint"], row["status"], row["key_id"]) == (call.endpoint, 200, site.key_id)
    charges = await site.conn.fetch(
        "SELECT amount_micros FROM ledger WHERE kind = 'charge' AND request_id = $1", request_id
    )
    assert [-int(c["amount_micros"]) for c in charges if c["amount_micros"]] == (
        [int(row["cost_micros"])] if row["cost_micros"] else []
    )
    assert 5_000_000 - balance == int(row["cost_micros"])
    if call.endpoint != "moderations":  # the example's moderation model is free, as OpenAI's
        assert row["cost_micros"] > 0
    # Nothing reached the instance's scratch SQLite file.
    await site.relay.state.db.flush()
    assert await site.relay.state.db.fetchall("SELECT id FROM usage") == []


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.endpoint}{'-stream' * c.stream}")
async def test_a_failure_after_admission_releases_the_hold_exactly_once(
    site: Site, call: Call
) -> None:
    state = site.relay.state
    settler = state.cluster.settler
    submitted: list[tuple[int, int]] = []
    real_submit = settler.submit

    def counting_submit(hold: Any, cost_micros: int, **kwargs: Any) -> None:
        submitted.append((hold.hold_id, cost_micros))
        real_submit(hold, cost_micros, **kwargs)

    settler.submit = counting_submit
    site.switch["armed"] = True
    try:
        response = await site.send(call)
    finally:
        site.switch["armed"] = False
        settler.submit = real_submit
    assert response.status_code == 500, response.text
    await site.settled()
    assert len(submitted) == 1 and submitted[0][1] == 0, submitted  # one release, no charge
    balance, ledger_sum, worst = await site.money()
    assert balance == ledger_sum == 5_000_000 and worst == 0
    assert not await site.conn.fetchval(
        "SELECT count(*) FROM ledger WHERE kind = 'charge' AND account_id = $1", site.account_id
    )
    rows = await site.conn.fetch(
        "SELECT status, error_code, cost_micros FROM usage WHERE key_id = $1", site.key_id
    )
    assert [tuple(r) for r in rows] == [(500, "internal_error", 0)]
    assert not await site.conn.fetchval("SELECT count(*) FROM abandoned_holds")


async def test_a_stored_response_is_found_through_postgresql_usage_rows(pg_database: str) -> None:
    """``/v1/responses/{id}`` finds its provider from the caller's own PostgreSQL rows."""
    from relay.cluster.pg_schema import migrate

    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        row = UsageRecord(
            request_id="req_1",
            ts_ms=1,
            endpoint="responses",
            status=200,
            account_id="acct_a",
            key_id="k",
            model="m",
            provider="openai",
            upstream_model="gpt",
            upstream_request_id="resp_1",
        )
        async with conn.transaction():
            await insert_usage(conn, [row])
        assert await response_provider(conn, "acct_a", "resp_1") == "openai"
        assert await response_provider(conn, "acct_b", "resp_1") is None  # not yours: unknown
        assert await response_provider(conn, "acct_a", "resp_2") is None
    finally:
        await conn.close()


async def test_admin_usage_and_audit_routes_read_postgresql(site: Site) -> None:
    for call in (CALLS[0], CALLS[-1]):  # a completion and an image edit
        assert (await site.send(call)).status_code == 200
    await site.settled()
    admin = site.relay.client  # the admin token's client
    summary = await admin.get("/admin/usage/summary", params={"by": "model"})
    assert summary.status_code == 200, summary.text
    groups = {g["group"]: g for g in summary.json()["data"]}
    costs = dict(await site.conn.fetch("SELECT model, cost_micros FROM usage"))
    assert {m: g["cost_micros"] for m, g in groups.items()} == costs
    assert {g["requests"] for g in groups.values()} == {1}
    month = time.strftime("%Y-%m", time.gmtime())
    export = await admin.get("/admin/usage/export", params={"month": month, "format": "jsonl"})
    assert export.status_code == 200, export.text
    exported = [line for line in export.text.splitlines() if line]
    assert export.headers["x-relay-rows"] == str(len(exported)) == "2"
    duplicate = await admin.post("/admin/accounts", json={"name": "routes"})
    assert duplicate.status_code == 409, duplicate.text  # refused: no audit row either
    replay = {"amount_usd": "5", "reference": "seed"}  # a replayed credit: no new row
    replayed = await admin.post(f"/admin/accounts/{site.account_id}/credits", json=replay)
    assert replayed.status_code == 200 and replayed.json()["credited"] is False
    # The admin writes of the fixture (the account, its credit, its key) are chained.
    listed = await admin.get("/admin/audit")
    assert listed.status_code == 200, listed.text
    actions = [row["action"] for row in listed.json()["data"]]
    assert actions == ["key.create", "wallet.credit", "account.create"]  # newest first
    credit_row = listed.json()["data"][1]
    assert credit_row["target"] == site.account_id
    assert credit_row["detail"] == {"amount_micros": 5_000_000, "reference": "seed"}
    verified = await admin.get("/admin/audit/verify")
    assert verified.status_code == 200, verified.text
    assert verified.json() | {"first_id": 1} == {
        "ok": True,
        "rows": 3,
        "first_id": 1,
        "last_id": 3,
        "broken_at": None,
        "reason": None,
    }


_RESPONSE = {
    "id": "resp_up",
    "object": "response",
    "created_at": 1,
    "status": "completed",
    "model": "gpt-4o-mini",
    "output": [],
    "usage": {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11},
}


async def test_a_stored_response_is_retrieved_through_its_owners_postgresql_rows(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    """A native Responses upstream: create, then ``GET /v1/responses/{id}`` reaches the
    provider that created it for the owner, and answers 404 to another account."""
    from conftest import FakeUpstream, config_text, json_reply

    def answer(seen: Any) -> httpx.Response:
        return json_reply(200, json.dumps(_RESPONSE).encode())

    upstream = FakeUpstream(answer)
    text = config_text(
        tmp_path / "relay.db",
        upstream_url="http://127.0.0.1:9/v1",
        provider_extra="responses_api = true",
    )
    db = 1 + secrets.randbelow(15)
    text += (
        f'\n[storage]\nurl = "{pg_database}"\n'
        f'[cluster]\nredis_url = "redis://127.0.0.1:{redis_server.port}/{db}"\nlease_s = 3\n'
    )
    config = parse_config(text, base_dir=str(tmp_path))
    async with serve_relay(config, client_factory=upstream.factory()) as relay:
        secrets_by_name = {}
        for name in ("owner", "other"):
            account = (await relay.client.post("/admin/accounts", json={"name": name})).json()
            credit = {"amount_usd": "1", "reference": "seed"}
            await relay.client.post(f"/admin/accounts/{account['id']}/credits", json=credit)
            key = await relay.client.post(
                f"/admin/accounts/{account['id']}/keys", json={"name": "k"}
            )
            secrets_by_name[name] = {"authorization": f"Bearer {key.json()['secret']}"}
        created = await relay.client.post(
            "/v1/responses",
            json={"model": "fake-gpt", "input": "Hi"},
            headers=secrets_by_name["owner"],
        )
        assert created.status_code == 200, created.text
        mine = await relay.client.get("/v1/responses/resp_up", headers=secrets_by_name["owner"])
        assert mine.status_code == 200 and mine.json()["id"] == "resp_up", mine.text
        assert upstream.seen[-1].url.endswith("/v1/responses/resp_up")
        theirs = await relay.client.get("/v1/responses/resp_up", headers=secrets_by_name["other"])
        assert theirs.status_code == 404, theirs.text
