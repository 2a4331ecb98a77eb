"""relay.http.front: the billable routes skip Starlette's stack and keep its behaviour.

Over real loopback HTTP (relay under hypercorn, the in-process mock provider): a hot
handler that raises still answers OpenAI's JSON 500 and gives back its hold and slot;
other methods on a hot path answer 405 as before; the admin-token throttle counts on hot
paths. And the ``Front`` itself, on a bare ASGI stack: which routes are hot, the error
guard before and after a response started, and the lifespan passing through.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_config
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from support_accounts import run_relay

from relay.api import data_plane_routes
from relay.errors import InvalidRequest, RelayError
from relay.http.admin_throttle import MAX_FAILURES
from relay.http.disconnect import CancelOnDisconnect
from relay.http.front import Front, hot_routes
from relay.http.grace import GraceCut
from relay.http.responses import error_response, unexpected_error_response

CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}


def test_the_billable_post_routes_are_hot_and_only_they() -> None:
    hot = hot_routes(data_plane_routes())
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/responses",
        "/v1/images/generations",
        "/v1/audio/transcriptions",
    } <= set(hot)
    assert all(isinstance(app, CancelOnDisconnect) for app in hot.values())
    # Not billable on disconnect (videos), or not a CancelOnDisconnect endpoint.
    assert "/v1/videos" not in hot
    assert "/v1/messages/count_tokens" not in hot
    assert "/v1/models" not in hot


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected fault")


async def test_a_hot_handler_that_raises_answers_json_500_and_releases(
    tmp_path: Path, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_relay(make_config(tmp_path)) as relay:
        account, key = await relay.funded_key("acme", "10")
        monkeypatch.setattr(relay.state.router, "open_route", _boom)
        async with httpx.AsyncClient(base_url=relay.base_url) as anon:
            answer = await anon.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {key['secret']}"},
            )
        assert answer.status_code == 500
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["error"]["code"] == "internal_error"
        state = relay.state
        view = state.wallet.snapshot(account["id"])
        assert view.held_micros == 0 and state.wallet.open_hold_count() == 0
        assert state.gate.limiter.in_flight(key["id"]) == 0
        assert view.balance_micros == 10_000_000
        rows = await relay.rows("SELECT status, error_code, cost_micros FROM usage")
        assert rows == [{"status": 500, "error_code": "internal_error", "cost_micros": 0}]


async def test_other_methods_on_a_hot_path_are_still_405(tmp_path: Path, admin_token: str) -> None:
    async with run_relay(make_config(tmp_path)) as relay:
        for method in ("GET", "HEAD", "PUT"):
            answer = await relay.client.request(method, "/v1/chat/completions")
            assert answer.status_code == 405, (method, answer.text)
            if method != "HEAD":
                assert answer.json()["error"]["message"].startswith(f"Method {method}")
        assert (await relay.client.post("/v1/chat/completion")).status_code == 404
        ok = await relay.client.post("/v1/chat/completions", json=CHAT)  # the admin token
        assert ok.status_code == 200, ok.text
        assert "metadata" in ok.json()


async def test_wrong_admin_tokens_on_a_hot_path_count_towards_the_lockout(
    tmp_path: Path, admin_token: str
) -> None:
    config = make_config(tmp_path)
    async with run_relay(config) as relay:
        wrong = {"authorization": "Bearer " + "guess-" * 4}
        async with httpx.AsyncClient(base_url=relay.base_url) as anon:
            for _ in range(MAX_FAILURES):
                answer = await anon.post("/v1/chat/completions", json=CHAT, headers=wrong)
                assert answer.status_code == 401
            right = {"authorization": f"Bearer {admin_token}"}
            locked = await anon.get("/admin/accounts", headers=right)
            assert locked.status_code == 429, locked.text
            hot = await anon.post("/v1/chat/completions", json=CHAT, headers=right)
            assert hot.status_code == 429


# ------------------------------------------------------------------- Front on a bare stack


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.sent.append(message)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _scope(path: str, method: str = "POST") -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "state": {},
    }


def _front(endpoint: ASGIApp, fallback: ASGIApp | None = None) -> Front:
    async def starlette(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(b"starlette", status_code=299)(scope, receive, send)

    handlers = {
        RelayError: lambda request, exc: error_response(exc),
        Exception: lambda request, exc: unexpected_error_response(exc),
    }
    return Front(fallback or starlette, {"/v1/hot": endpoint}, lambda app: app, handlers)


async def _answer(request: Request) -> Response:
    return Response(b"hot")


async def test_hot_paths_go_straight_to_their_endpoint_and_the_rest_to_starlette() -> None:
    front = _front(CancelOnDisconnect(_answer))
    for scope, body in [
        (_scope("/v1/hot"), b"hot"),
        (_scope("/v1/hot", "GET"), b"starlette"),
        (_scope("/v1/hot/"), b"starlette"),
        ({**_scope("/v1/hot"), "root_path": "/base"}, b"starlette"),
        (_scope("/elsewhere"), b"starlette"),
    ]:
        sent = _Recorder()
        await front(scope, _no_body, sent)
        assert sent.sent[-1]["body"] == body, scope


async def test_a_relay_error_is_its_error_response_and_not_raised() -> None:
    async def refuses(scope: Scope, receive: Receive, send: Send) -> None:
        raise InvalidRequest("no")

    sent = _Recorder()
    await _front(refuses)(_scope("/v1/hot"), _no_body, sent)
    assert sent.sent[0]["status"] == 400


async def test_an_unexpected_error_is_a_json_500_then_raised_for_the_server() -> None:
    async def crashes(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("secret prompt text")

    sent = _Recorder()
    with pytest.raises(RuntimeError):
        await _front(crashes)(_scope("/v1/hot"), _no_body, sent)
    assert sent.sent[0]["status"] == 500
    assert b"secret" not in sent.sent[1]["body"]
    assert b"internal_error" in sent.sent[1]["body"]


async def test_nothing_more_is_sent_once_a_response_started() -> None:
    async def breaks_mid_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise InvalidRequest("too late")

    sent = _Recorder()
    with pytest.raises(InvalidRequest):
        await _front(breaks_mid_answer)(_scope("/v1/hot"), _no_body, sent)
    assert [message["type"] for message in sent.sent] == ["http.response.start"]


async def test_under_grace_cut_the_guard_reads_its_progress_instead_of_wrapping_send() -> None:
    """Served (``GraceCut`` outside), the answer's progress is GraceCut's: the endpoint's
    ``send`` is GraceCut's one wrapper around the server's, and the guard still answers
    an error before the start and nothing after it."""
    seen: list[Send] = []

    async def breaks_mid_answer(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise InvalidRequest("too late")

    sent = _Recorder()
    with pytest.raises(InvalidRequest):
        await GraceCut(_front(breaks_mid_answer))(_scope("/v1/hot"), _no_body, sent)
    assert [message["type"] for message in sent.sent] == ["http.response.start"]
    assert inspect.getclosurevars(seen[0]).nonlocals["send"] is sent

    async def refuses(scope: Scope, receive: Receive, send: Send) -> None:
        raise InvalidRequest("no")

    sent = _Recorder()
    await GraceCut(_front(refuses))(_scope("/v1/hot"), _no_body, sent)
    assert sent.sent[0]["status"] == 400


async def test_the_lifespan_is_starlettes() -> None:
    seen: list[str] = []

    async def starlette(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    front = _front(CancelOnDisconnect(_answer), starlette)
    await front({"type": "lifespan"}, _no_body, _Recorder())
    assert seen == ["lifespan"]


def test_routes_with_parameters_or_other_methods_stay_with_starlette() -> None:
    routes = [
        Route("/v1/a/{x}", CancelOnDisconnect(_answer), methods=["POST"]),
        Route("/v1/b", CancelOnDisconnect(_answer), methods=["POST", "GET"]),
        Route("/v1/c", _answer, methods=["POST"]),
    ]
    assert hot_routes(routes) == {}
