"""The privacy contract (docs/architecture.md §5), end to end: content and secrets leave no trace.

A unique canary goes in as prompt content and another comes back as response content,
through every data-plane endpoint and failure path (upstream errors and 4xx echoing the
prompt, a malformed answer, a broken stream, a client hanging up mid-stream), with a key
created, used and revoked on the way. Afterwards neither canary, nor the client key's
secret, nor the upstream provider key may appear in the database file, its -wal/-shm,
any other file beside it (archives), the captured logs (every logger at DEBUG) or the
process's stdout/stderr. The client key must not appear in any answer after its creation,
nor the provider key in any answer at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    FakeUpstream,
    RelayServer,
    SeenRequest,
    json_reply,
    make_config,
    serve_relay,
    sse_event,
    stream_reply,
)

PROMPT = "prompt-canary-" + secrets.token_hex(8)
ANSWER = "answer-canary-" + secrets.token_hex(8)
UPSTREAM_KEY = "sk-upstream-canary-" + secrets.token_hex(8)
HANG_S = 5.0  # a hanging upstream stream is cut by the client long before this


def _content(scenario: str) -> str:
    return f"{PROMPT} scenario={scenario}"


def _chat(model: str, scenario: str, **extra: Any) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": PROMPT},
        {"role": "user", "content": _content(scenario)},
    ]
    return {"model": model, "messages": messages, **extra}


def _chat_answer() -> bytes:
    message = {"role": "assistant", "content": ANSWER}
    body = {
        "id": "chatcmpl-privacy",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    return json.dumps(body).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse_event(
        {"id": "chatcmpl-privacy", "object": "chat.completion.chunk", "choices": [choice]}
    )


def _stream_parts() -> list[bytes]:
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    return [
        _chunk({"role": "assistant", "content": ANSWER}),
        _chunk({"content": " " + ANSWER}),
        _chunk({}, "stop"),
        sse_event({"id": "chatcmpl-privacy", "choices": [], "usage": usage}),
        b"data: [DONE]\n\n",
    ]


def _hanging_stream() -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        yield _chunk({"role": "assistant", "content": ANSWER})
        await asyncio.sleep(HANG_S)
        yield _chunk({"content": ANSWER})

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def _error_body(status: int) -> bytes:
    # Upstreams do this: quote the offending input, or the key, back in the error.
    message = f"HTTP {status}: bad input {PROMPT!r}, key {UPSTREAM_KEY}, context {ANSWER}"
    return json.dumps({"error": {"message": message, "type": "x", "code": "x"}}).encode()


def upstream_answer(seen: SeenRequest) -> httpx.Response:
    """Answer by the scenario tag relay forwarded inside the prompt."""
    match = re.search(r"scenario=(\w+)", seen.raw.decode())
    scenario = match.group(1) if match else ""
    if scenario == "embed":
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2], "note": ANSWER}]
        usage = {"prompt_tokens": 7, "total_tokens": 7}
        return json_reply(
            200, json.dumps({"object": "list", "data": data, "usage": usage}).encode()
        )
    if scenario == "stream":
        return stream_reply(_stream_parts())
    if scenario == "broken":
        return stream_reply(_stream_parts()[:2], fail_after=2)
    if scenario == "hang":
        return _hanging_stream()
    if scenario == "garbage":
        return json_reply(200, f"not json {ANSWER} {PROMPT}".encode())
    if scenario.startswith("status"):
        status = int(scenario.removeprefix("status"))
        return json_reply(status, _error_body(status))
    return json_reply(200, _chat_answer())


class Traffic:
    """Sends the requests and keeps every answer, to check none carries a secret."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.answers: list[tuple[int, str]] = []

    async def post(self, path: str, body: dict[str, Any], secret: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {secret}"}
        response = await self.server.client.post(path, json=body, headers=headers)
        self.keep(response)
        return response

    async def stream(self, body: dict[str, Any], secret: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {secret}"}
        async with self.server.client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            await response.aread()
        self.keep(response)
        return response

    async def hang_up_mid_stream(self, secret: str) -> None:
        """Read the first chunk of a stream, then drop the connection."""
        headers = {"authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=10.0) as client:
            body = _chat("fake-gpt", "hang", stream=True)
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_bytes():
                    assert ANSWER.encode() in chunk
                    break

    def keep(self, response: httpx.Response) -> None:
        self.answers.append((response.status_code, str(response.headers) + response.text))


async def _drive_every_path(traffic: Traffic, admin: httpx.AsyncClient) -> tuple[str, str]:
    """All the data-plane traffic; returns the key's (id, secret)."""
    account = (await admin.post("/admin/accounts", json={"name": "privacy"})).json()["id"]
    credit = {"amount_usd": "10", "reference": "seed"}
    assert (await admin.post(f"/admin/accounts/{account}/credits", json=credit)).status_code == 201
    created = await admin.post(f"/admin/accounts/{account}/keys", json={"name": "canary-key"})
    assert created.status_code == 201, created.text
    key_id, secret = created.json()["id"], created.json()["secret"]

    chat = "/v1/chat/completions"
    expected = [
        (chat, _chat("fake-gpt", "plain"), 200),
        (chat, _chat("mock-gpt", "plain"), 200),
        (chat + "?dryRun=true", _chat("fake-gpt", "plain"), 200),
        ("/v1/embeddings", {"model": "fake-embedding", "input": _content("embed")}, 200),
        ("/v1/embeddings", {"model": "mock-embedding", "input": [_content("embed")]}, 200),
        (chat, _chat("fake-gpt", "garbage"), 200),
        (chat, _chat("fake-gpt", "status400"), 400),
        (chat, _chat("fake-gpt", "status422"), 422),
        (chat, _chat("fake-gpt", "status500"), 502),
        (chat, {"model": "fake-gpt", "messages": PROMPT}, 400),
        (
            chat,
            {"model": "fake-gpt", "messages": [{"role": "user", "content": PROMPT}], "n": "x"},
            400,
        ),
    ]
    for path, body, status in expected:
        response = await traffic.post(path, body, secret)
        assert response.status_code == status, (path, body, response.text)
    ok_stream = await traffic.stream(_chat("fake-gpt", "stream", stream=True), secret)
    assert ok_stream.status_code == 200 and ANSWER in ok_stream.text
    broken = await traffic.stream(_chat("fake-gpt", "broken", stream=True), secret)
    assert broken.status_code == 200 and "upstream_error" in broken.text
    await traffic.hang_up_mid_stream(secret)

    revoked = await admin.post(f"/admin/keys/{key_id}/revoke")
    assert revoked.status_code == 200
    after = await traffic.post(chat, _chat("fake-gpt", "plain"), secret)
    assert after.status_code == 401
    bogus = await traffic.post(chat, _chat("fake-gpt", "plain"), f"rk_{PROMPT}")
    assert bogus.status_code == 401 and PROMPT not in bogus.text
    return key_id, secret


async def _upstream_rejects_its_key(traffic: Traffic, admin: httpx.AsyncClient) -> None:
    """Last, as it takes the only upstream key out of rotation: a 401 quoting the key."""
    account = (await admin.post("/admin/accounts", json={"name": "late"})).json()["id"]
    credit = {"amount_usd": "1", "reference": "seed-late"}
    await admin.post(f"/admin/accounts/{account}/credits", json=credit)
    secret = (await admin.post(f"/admin/accounts/{account}/keys", json={"name": "k"})).json()[
        "secret"
    ]
    response = await traffic.post("/v1/chat/completions", _chat("fake-gpt", "status401"), secret)
    assert response.status_code >= 500, response.text


async def _usage_once_hang_up_is_recorded(server: RelayServer) -> list[dict[str, Any]]:
    """The usage rows, once the server has noticed the hang-up and settled it (499)."""
    for _ in range(500):
        usage = await server.usage_rows()
        if any(row["status"] == 499 for row in usage):
            return usage
        await asyncio.sleep(0.01)
    raise AssertionError("the hang-up mid-stream was never recorded")


def _files_beside(database: Path) -> dict[Path, bytes]:
    return {
        path: path.read_bytes()
        for path in sorted(database.parent.rglob("*"))
        if path.is_file() and path.suffix not in (".toml", ".secret")
    }


def _hits(haystacks: dict[str, bytes], needles: dict[str, str]) -> list[str]:
    return [
        f"{name} in {where}"
        for where, data in haystacks.items()
        for name, needle in needles.items()
        if needle.encode() in data
    ]


async def test_no_content_or_secret_reaches_the_database_files_or_logs(
    tmp_path: Path,
    admin_token: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeUpstream(upstream_answer)
    config = make_config(
        tmp_path,
        upstream_url="http://upstream.test/v1",
        upstream_keys=(UPSTREAM_KEY,),
        provider_extra="max_attempts = 1",
    )
    database = config.database_path
    seen_running: dict[Path, bytes] = {}
    async with serve_relay(config, client_factory=fake.factory()) as server:
        traffic = Traffic(server)
        key_id, secret = await _drive_every_path(traffic, server.client)
        await _upstream_rejects_its_key(traffic, server.client)
        usage = await _usage_once_hang_up_is_recorded(server)
        await server.state.db.flush()
        seen_running = _files_beside(database)  # the WAL still holds the newest pages here
    assert any(row["key_id"] == key_id for row in usage)

    # Prove the canaries did travel: the upstream saw the prompt, the client the answer.
    assert all(PROMPT.encode() in seen.raw for seen in fake.seen)
    assert {seen.key for seen in fake.seen} == {UPSTREAM_KEY}
    assert any(ANSWER in text for _, text in traffic.answers)

    needles = {"prompt canary": PROMPT, "answer canary": ANSWER, "client key": secret}
    needles["upstream key"] = UPSTREAM_KEY
    stored = {f"{p.name} (running)": data for p, data in seen_running.items()}
    stored |= {f"{p.name} (stopped)": data for p, data in _files_beside(database).items()}
    assert database in seen_running and f"{database.name}-wal" in {p.name for p in seen_running}
    out, err = capfd.readouterr()
    logs = {
        "log records": "\n".join(
            f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.stack_info or ''}"
            for r in caplog.records
        ).encode(),
        "stdout": out.encode(),
        "stderr": err.encode(),
    }
    assert _hits(stored, needles) == []
    assert _hits(logs, needles) == []
    assert caplog.records, "logging was captured"

    assert [status for status, text in traffic.answers if secret in text] == []


async def test_an_upstream_4xx_quoting_the_provider_key_does_not_reach_the_client(
    tmp_path: Path, admin_token: str
) -> None:
    fake = FakeUpstream(upstream_answer)
    config = make_config(
        tmp_path, upstream_url="http://upstream.test/v1", upstream_keys=(UPSTREAM_KEY,)
    )
    async with serve_relay(config, client_factory=fake.factory()) as server:
        admin = server.client
        account = (await admin.post("/admin/accounts", json={"name": "a"})).json()["id"]
        await admin.post(
            f"/admin/accounts/{account}/credits", json={"amount_usd": "1", "reference": "r"}
        )
        secret = (await admin.post(f"/admin/accounts/{account}/keys", json={"name": "k"})).json()[
            "secret"
        ]
        response = await Traffic(server).post(
            "/v1/chat/completions", _chat("fake-gpt", "status400"), secret
        )
    assert response.status_code == 400
    assert UPSTREAM_KEY not in response.text
