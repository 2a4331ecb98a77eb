"""Console hardening: members only tighten key limits, links and cookies follow
``[server] public_url``, sign-in lockout sees through trusted proxies only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_config
from support_accounts import Relay
from support_console import Browser, create_user, serve_console

from relay.identity.accounts import ApiKey


@pytest.fixture
def relay_dir(tmp_path: Path, admin_token: str) -> Path:
    return tmp_path


def key_form(key: ApiKey, **changes: Any) -> dict[str, Any]:
    """The edit form as the key page fills it in, with ``changes`` applied."""
    form: dict[str, Any] = {
        "name": key.label,
        "spend_cap_usd": str(key.spend_cap_micros / 1_000_000) if key.spend_cap_micros else "",
        "rpm": str(key.rpm),
        "tpm": str(key.tpm),
        "concurrency": str(key.concurrency),
        "models": list(key.models),
        "endpoints": list(key.endpoints),
    }
    return form | changes


async def test_a_member_may_tighten_but_not_lift_an_owners_limits(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with serve_console(monkeypatch, make_config(relay_dir)) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=acme["id"])
        await create_user(relay, "m@acme.test", account=acme["id"], role="member")
        keys = f"/console/a/{acme['id']}/keys"
        async with Browser(relay) as member, Browser(relay) as owner:
            await member.login("m@acme.test")
            await owner.login("o@acme.test")
            made = await member.submit(keys, keys, {"name": "mine", "concurrency": "50"})
            assert made.status_code == 303, made.text  # POST-redirect-GET
            (key,) = relay.state.store.keys.values()
            page = f"{keys}/{key.id}"
            limited = key_form(
                key, rpm="10", spend_cap_usd="5", concurrency="5", models=["mock-gpt"]
            )
            assert (await owner.submit(page, page, limited)).status_code == 303
            key = relay.state.store.keys[key.id]
            assert (key.rpm, key.spend_cap_micros, key.models) == (10, 5_000_000, ("mock-gpt",))

            for lift in (
                {"rpm": "0"},
                {"rpm": "11"},
                {"spend_cap_usd": ""},
                {"spend_cap_usd": "6"},
                {"concurrency": "6"},
                {"models": []},
                {"models": ["mock-gpt", "mock-embedding"]},
            ):
                refused = await member.submit(page, page, key_form(key, **lift))
                assert refused.status_code == 403, lift
                assert "Members may only tighten" in refused.text
                assert relay.state.store.keys[key.id] == key, lift

            tighter = key_form(key, name="mine-renamed", rpm="5", tpm="1000", concurrency="2")
            assert (await member.submit(page, page, tighter)).status_code == 303
            after = relay.state.store.keys[key.id]
            assert (after.label, after.rpm, after.tpm, after.concurrency) == (
                "mine-renamed",
                5,
                1000,
                2,
            )
            # The owner may lift what the member may not.
            lifted = key_form(after, rpm="0", spend_cap_usd="", models=[])
            assert (await owner.submit(page, page, lifted)).status_code == 303
            assert relay.state.store.keys[key.id].rpm == 0


class BehindTlsProxy(httpx.AsyncBaseTransport):
    """Plain http to relay, as from a TLS-terminating proxy: records each Set-Cookie and
    drops ``Secure`` from it so that httpx's jar still sends the cookie back."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.cookies: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.cookies.extend(response.headers.get_list("set-cookie"))
        response.headers = httpx.Headers(
            [
                (name, re.sub(r";\s*secure", "", value, flags=re.IGNORECASE))
                if name.lower() == "set-cookie"
                else (name, value)
                for name, value in response.headers.multi_items()
            ]
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _invite_link(html: str) -> str:
    found = re.search(r'value="(https?://[^"]+/console/invite/[^"]+)"', html)
    assert found is not None, "no invite link on the page"
    return found.group(1)


async def test_public_url_makes_links_and_a_secure_cookie(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    config = make_config(relay_dir, server_extra='public_url = "https://relay.example.com/"')
    async with serve_console(monkeypatch, config) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=acme["id"])
        members = f"/console/a/{acme['id']}/members"
        async with Browser(relay) as owner:
            proxy = BehindTlsProxy()
            await owner.client.aclose()
            owner.client = httpx.AsyncClient(base_url=relay.base_url, transport=proxy)
            assert (await owner.login("o@acme.test")).status_code == 303
            assert len(proxy.cookies) == 2  # the pre-session cookie, then the session
            assert all("; secure" in cookie.lower() for cookie in proxy.cookies)
            made = await owner.submit(members, members + "/invite", {"role": "member"})
            assert made.status_code == 303, made.text  # the link is shown on the next page
            shown = await owner.get(made.headers["location"])
            assert _invite_link(shown.text).startswith("https://relay.example.com/console/invite/")
            # A form posted from the public origin passes the Origin check behind the proxy.
            page = await owner.get(members)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            posted = await owner.client.post(
                members + "/invite",
                data={"csrf_token": token.group(1), "role": "viewer"},
                headers={"origin": "https://relay.example.com"},
            )
            assert posted.status_code == 303
            foreign = await owner.client.post(
                members + "/invite",
                data={"csrf_token": token.group(1), "role": "viewer"},
                headers={"origin": "https://evil.example"},
            )
            assert foreign.status_code == 403


async def test_without_public_url_a_forged_host_gets_no_invite_link(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with serve_console(monkeypatch, make_config(relay_dir)) as relay:
        acme = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=acme["id"])
        members = f"/console/a/{acme['id']}/members"
        async with Browser(relay) as owner:
            signed_in = await owner.login("o@acme.test")
            assert all("secure" not in c.lower() for c in signed_in.headers.get_list("set-cookie"))
            page = await owner.get(members)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            forged = await owner.client.post(
                members + "/invite",
                data={"csrf_token": token.group(1), "role": "member"},
                headers={"host": "evil.example"},
            )
            assert forged.status_code == 400 and "public_url" in forged.text
            rows = await relay.rows("SELECT * FROM console_invites")
            assert rows == []  # refused before any invite was made
            made = await owner.submit(members, members + "/invite", {"role": "member"})
            shown = await owner.get(made.headers["location"])
            assert _invite_link(shown.text).startswith(relay.base_url + "/console/invite/")


async def _fail_logins(relay: Relay, client_ip: str, count: int) -> list[int]:
    statuses = []
    async with Browser(relay) as browser:
        form = await browser.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        for n in range(count):
            answer = await browser.client.post(
                "/console/login",
                data={"csrf_token": token.group(1), "email": f"u{n}@x.test", "password": "no"},
                headers={"x-forwarded-for": client_ip},
            )
            statuses.append(answer.status_code)
    return statuses


@pytest.mark.parametrize("trusted", [True, False])
async def test_sign_in_lockout_uses_forwarded_for_only_from_a_trusted_proxy(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path, trusted: bool
) -> None:
    extra = 'trusted_proxies = ["127.0.0.0/8"]' if trusted else ""
    async with serve_console(monkeypatch, make_config(relay_dir, server_extra=extra)) as relay:
        assert await _fail_logins(relay, "203.0.113.7", 20) == [401] * 20
        assert await _fail_logins(relay, "203.0.113.7", 1) == [429]
        # Another client behind the proxy signs in normally; without a trusted proxy the
        # header is the client's own invention and does not escape the lockout.
        assert await _fail_logins(relay, "198.51.100.2", 1) == [401 if trusted else 429]
