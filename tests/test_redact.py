"""Provider keys never reach a client or the usage table, in any JSON spelling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx
import pytest
from conftest import (
    FakeUpstream,
    SeenRequest,
    chat_answer,
    json_reply,
    make_config,
    sse_event,
    stream_reply,
)
from support_accounts import Relay, auth, run_relay

from relay.admission.exchange import Exchange
from relay.identity.auth import ANONYMOUS
from relay.upstream.redact import KeyRedactor
from relay.upstream.routing import Route

KEY = "sk-live/Secret_key-0123456789"


def escaped(text: str, every: int = 1) -> str:
    """``text`` with every ``every``-th character written as a JSON ``\\uXXXX`` escape."""
    return "".join(f"\\u{ord(c):04X}" if i % every == 0 else c for i, c in enumerate(text))


@pytest.mark.parametrize(
    "spelling",
    [KEY, escaped(KEY), escaped(KEY, 3), KEY.replace("/", "\\/"), escaped(KEY).lower()],
)
def test_every_json_spelling_of_a_key_is_redacted(spelling: str) -> None:
    redactor = KeyRedactor([KEY, "other-key-000000"])
    body = json.dumps({"error": {"message": "bad key "}})[:-3] + spelling + '"}}'
    redacted = redactor.redact(body.encode())
    assert KEY not in json.dumps(json.loads(redacted))
    assert KEY not in json.loads(redacted)["error"]["message"]
    assert b"[redacted]" in redacted


def test_a_body_without_a_key_is_returned_untouched() -> None:
    redactor = KeyRedactor([KEY])
    body = b'{"text": "caf\\u00e9 sk-live but not the key"}'
    assert redactor.redact(body) == body


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("chatcmpl-abc123", True),
        ("msg_01XyZ", True),
        ("gen-1700000000-abc:def@x+y=", True),
        (None, False),
        ("", False),
        ("x" * 129, False),
        ("=cmd|calc", False),
        ("../../admin", False),
        ("id with space", False),
        (f"chatcmpl-{KEY.replace('/', '')}", False),
    ],
)
def test_upstream_ids_are_kept_only_when_safe(value: str | None, kept: bool) -> None:
    redactor = KeyRedactor([KEY.replace("/", "")])
    assert redactor.safe_id(value) == (value if kept else None)


# ---------------------------------------------------------------- through a running relay


def leaky(seen: SeenRequest) -> httpx.Response:
    """An upstream that quotes the key it was sent, escaped, in ids and messages."""
    key = seen.key
    if seen.body.get("messages", [{}])[0].get("content") == "fail":
        body = '{"error": {"message": "Incorrect API key: ' + escaped(key, 2) + '"}}'
        return json_reply(400, body.encode())
    if seen.body.get("stream"):
        first = {"id": "chatcmpl-" + key, "model": "gpt-4o-mini", "choices": [{"delta": {}}]}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        return stream_reply(
            [
                sse_event(first),
                sse_event({"id": "x", "choices": [], "usage": usage}),
                b"data: [DONE]\n\n",
            ]
        )
    answer = json.loads(chat_answer())
    answer["id"] = "chatcmpl-" + key
    answer["choices"][0]["message"]["content"] = "your key is " + escaped(key)
    return json_reply(200, json.dumps(answer).encode().replace(b"\\\\u", b"\\u"))


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    fake = FakeUpstream(leaky)
    config = make_config(tmp_path, upstream_url="http://up.test/v1", upstream_keys=(KEY,))
    async with run_relay(config, client_factory=fake.factory()) as served:
        yield served


def chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": "fake-gpt", "messages": [{"role": "user", "content": content}], **extra}


async def test_no_key_in_answers_errors_streams_or_usage_rows(relay: Relay) -> None:
    _, key = await relay.funded_key("acme")
    headers = auth(key["secret"])
    answer = await relay.client.post("/v1/chat/completions", json=chat("hi"), headers=headers)
    assert answer.status_code == 200, answer.text
    decoded = answer.json()
    assert KEY not in json.dumps(decoded, ensure_ascii=False)
    assert decoded["metadata"]["upstream_id"] in (None, "")
    rejected = await relay.client.post("/v1/chat/completions", json=chat("fail"), headers=headers)
    assert rejected.status_code == 400
    assert KEY not in json.dumps(rejected.json(), ensure_ascii=False)
    streamed = await relay.client.post(
        "/v1/chat/completions", json=chat("hi", stream=True), headers=headers
    )
    assert streamed.status_code == 200 and KEY.encode() not in streamed.content
    rows = await relay.rows("SELECT upstream_request_id FROM usage")
    assert len(rows) == 3
    assert all(row["upstream_request_id"] is None for row in rows)


def test_an_exchange_vets_its_upstream_id_once_and_again_when_it_changes() -> None:
    class CountingRedactor(KeyRedactor):
        __slots__ = ("asked",)

        def safe_id(self, value: str | None) -> str | None:
            self.asked += 1
            return super().safe_id(value)

    redactor = CountingRedactor([KEY])
    redactor.asked = 0
    pool = SimpleNamespace(redactor=redactor)
    route = SimpleNamespace(provider=SimpleNamespace(name="up", pool=pool), upstream_model="m")
    exchange = Exchange("req_1", "chat", ANONYMOUS)
    exchange.route = cast(Route, route)
    exchange.upstream_id = "chatcmpl-1"
    assert exchange.metadata()["upstream_id"] == "chatcmpl-1"
    assert exchange.usage_record().upstream_request_id == "chatcmpl-1"
    assert redactor.asked == 1
    exchange.upstream_id = f"id-{KEY}"
    assert exchange.safe_upstream_id() is None
    assert exchange.usage_record().upstream_request_id is None
    assert redactor.asked == 2
