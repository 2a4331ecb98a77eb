"""Console auth: signed cookies, CSRF, sign-in throttling, roles, sessions over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support_console import PASSWORD, Browser, console_relay, create_user, csrf_of

from relay.console.auth.csrf import csrf_token, origin_allowed, valid_csrf_token
from relay.console.auth.signing import sign, unsign
from relay.console.auth.throttle import LoginThrottle
from relay.identity.roles import Permission, Role, allows

KEY = b"k" * 32

# --- signing -----------------------------------------------------------------------------


def test_signed_values_round_trip_and_refuse_tampering() -> None:
    token = sign(KEY, "abc")
    assert unsign(KEY, token) == "abc"
    assert unsign(b"x" * 32, token) is None
    assert unsign(KEY, "abd." + token.split(".")[1]) is None
    assert unsign(KEY, token + "x") is None
    for junk in (None, "", "nodot", "a.b.c", ".mac"):
        assert unsign(KEY, junk) is None
    with pytest.raises(ValueError):
        sign(KEY, "a.b")


# --- CSRF --------------------------------------------------------------------------------


def test_csrf_tokens_are_bound_to_their_session() -> None:
    token = csrf_token(KEY, "s:one")
    assert valid_csrf_token(KEY, "s:one", token)
    assert not valid_csrf_token(KEY, "s:two", token)
    assert not valid_csrf_token(KEY, None, token)
    assert not valid_csrf_token(KEY, "s:one", None)
    assert not valid_csrf_token(b"z" * 32, "s:one", token)


def test_origin_must_match_the_host_when_sent() -> None:
    assert origin_allowed({}, "relay.example:8787")
    assert origin_allowed({"origin": "https://relay.example:8787"}, "relay.example:8787")
    assert not origin_allowed({"origin": "https://evil.example"}, "relay.example:8787")
    assert not origin_allowed({"origin": "null"}, "relay.example:8787")


# --- throttling --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _fail(throttle: LoginThrottle, ip: str, email: str) -> None:
    """One wrong password: counted when it begins, never forgiven."""
    assert (await throttle.begin(ip, email)).wait_s == 0


async def test_throttle_per_email_window_and_success_reset() -> None:
    clock = Clock()
    throttle = LoginThrottle.in_memory(per_email=3, per_ip=100, window_s=60, clock=clock)
    for _ in range(3):
        assert await throttle.retry_after("1.1.1.1", "a@x") == 0
        await _fail(throttle, "1.1.1.1", "a@x")
    assert await throttle.retry_after("1.1.1.1", "a@x") == pytest.approx(60)
    assert await throttle.retry_after("2.2.2.2", "a@x") > 0  # the email is locked from anywhere
    assert (await throttle.begin("2.2.2.2", "a@x")).wait_s > 0
    assert await throttle.retry_after("1.1.1.1", "b@x") == 0  # other emails are not
    clock.now += 61
    assert await throttle.retry_after("1.1.1.1", "a@x") == 0
    await _fail(throttle, "1.1.1.1", "a@x")
    right = await throttle.begin("1.1.1.1", "a@x")
    await throttle.succeeded("1.1.1.1", "a@x", right)  # clears the email's count
    await _fail(throttle, "1.1.1.1", "a@x")
    await _fail(throttle, "1.1.1.1", "a@x")
    assert await throttle.retry_after("1.1.1.1", "a@x") == 0


async def test_throttle_per_ip_across_emails_and_bounded_memory() -> None:
    clock = Clock()
    throttle = LoginThrottle.in_memory(
        per_email=100, per_ip=4, window_s=60, max_entries=3, clock=clock
    )
    for n in range(4):
        await _fail(throttle, "9.9.9.9", f"user{n}@x")
    assert await throttle.retry_after("9.9.9.9", "new@x") > 0
    # A refused attempt counts nothing, for the IP or the email.
    assert (await throttle.begin("9.9.9.9", "new@x")).wait_s > 0
    assert await throttle.retry_after("7.7.7.7", "new@x") == 0
    # Only the 3 most recently failing emails are remembered.
    assert await throttle.retry_after("8.8.8.8", "user0@x") == 0


async def test_an_attempt_is_counted_before_its_check_and_uncounted_when_right() -> None:
    clock = Clock()
    throttle = LoginThrottle.in_memory(per_email=3, per_ip=3, window_s=60, clock=clock)
    # Ten attempts begun at once (each then waits for its argon2 check): only three go.
    begun = [await throttle.begin("5.5.5.5", "b@x") for _ in range(10)]
    assert [a.wait_s == 0 for a in begun].count(True) == 3
    # The right password uncounts its attempt on the IP and clears the email.
    await throttle.succeeded("5.5.5.5", "b@x", begun[0])
    assert await throttle.retry_after("5.5.5.5", "c@x") == 0
    assert await throttle.retry_after("6.6.6.6", "b@x") == 0
    # An attempt relay could not check (its store failed) is not held against anyone.
    other = LoginThrottle.in_memory(per_email=1, per_ip=1, window_s=60, clock=clock)
    attempt = await other.begin("5.5.5.5", "d@x")
    await other.abandoned("5.5.5.5", "d@x", attempt)
    assert await other.retry_after("5.5.5.5", "d@x") == 0


# --- roles -------------------------------------------------------------------------------


def test_role_permissions() -> None:
    assert all(allows(Role.OWNER, p) for p in Permission)
    assert allows(Role.ADMIN, Permission.MANAGE_ALL_KEYS)
    assert not allows(Role.ADMIN, Permission.VIEW_BILLING)
    assert not allows(Role.ADMIN, Permission.MANAGE_MEMBERS)
    assert allows(Role.MEMBER, Permission.MANAGE_OWN_KEYS)
    assert not allows(Role.MEMBER, Permission.MANAGE_ALL_KEYS)
    assert [p for p in Permission if allows(Role.VIEWER, p)] == [Permission.VIEW]
    assert not any(allows(None, p) for p in Permission)


# --- sessions over HTTP ------------------------------------------------------------------


@pytest.fixture
def relay_dir(tmp_path: Path, admin_token: str) -> Path:
    return tmp_path


async def test_sign_in_sets_a_hardened_cookie_and_sign_out_ends_it(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        account = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=account["id"])
        async with Browser(relay) as browser:
            assert (
                (await browser.get("/console/"))
                .headers["location"]
                .startswith("/console/login?next=")
            )
            response = await browser.login("o@acme.test")
            assert response.status_code == 303
            cookie = response.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
            assert "Secure" not in cookie  # plain http on loopback; set when served over TLS
            page = await browser.get(f"/console/a/{account['id']}")
            assert page.status_code == 200
            assert page.headers["cache-control"] == "no-store"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            stolen = dict(browser.client.cookies)
            home = f"/console/a/{account['id']}"
            out = await browser.submit(home, "/console/logout")
            assert out.headers["location"].startswith("/console/login")
        async with Browser(relay) as replay:
            replay.client.cookies.update(stolen)
            assert (await replay.get(home)).status_code == 303  # the old cookie is dead


async def test_tampered_cookie_and_unknown_user_are_signed_out(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        async with Browser(relay) as browser:
            browser.client.cookies.set("relay_session", "made-up.value", path="/console")
            assert (await browser.get("/console/")).status_code == 303
            failed = await browser.login("nobody@acme.test")
            assert failed.status_code == 401
            assert "do not match" in failed.text


async def test_sign_in_is_throttled_per_email(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        account = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=account["id"])
        async with Browser(relay) as browser:
            for _ in range(5):
                assert (await browser.login("o@acme.test", "wrong password!")).status_code == 401
            verifies = relay.hasher.verify_calls
            locked = await browser.login("o@acme.test")  # even the right password
            assert locked.status_code == 429
            assert "Too many failed sign-ins" in locked.text
            assert relay.hasher.verify_calls == verifies  # refused before any argon2 work


async def test_wrong_sign_ins_sent_at_once_get_no_more_checks_than_the_limit(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        account = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=account["id"])
        browsers = [Browser(relay) for _ in range(12)]
        for browser in browsers:  # each with its own session cookie and CSRF token
            await browser.__aenter__()
            await browser.get("/console/login")
        try:
            verifies = relay.hasher.verify_calls
            answers = await asyncio.gather(
                *(b.login("o@acme.test", "wrong password!") for b in browsers)
            )
            statuses = sorted(a.status_code for a in answers)
            assert statuses == [401] * 5 + [429] * 7
            assert relay.hasher.verify_calls - verifies == 5  # the per-email limit
        finally:
            for browser in browsers:
                await browser.__aexit__(None, None, None)


async def test_posts_without_a_valid_csrf_token_are_refused(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        account = await relay.create_account("acme")
        key = await relay.create_key(account["id"], name="k")
        await create_user(relay, "o@acme.test", account=account["id"])
        revoke = f"/console/a/{account['id']}/keys/{key['id']}/revoke"
        async with Browser(relay) as other:
            await other.login("o@acme.test")
            foreign_token = (await other.get(f"/console/a/{account['id']}/keys")).text
        async with Browser(relay) as browser:
            await browser.login("o@acme.test")
            assert (await browser.client.post(revoke)).status_code == 403
            assert (await browser.client.post(revoke, data={"csrf_token": "x"})).status_code == 403
            stale = {"csrf_token": csrf_of(foreign_token)}  # another session's token
            assert (await browser.client.post(revoke, data=stale)).status_code == 403
            page = await browser.get(f"/console/a/{account['id']}/keys")
            good = {"csrf_token": csrf_of(page.text)}
            cross_site = await browser.client.post(
                revoke, data=good, headers={"origin": "https://evil.example"}
            )
            assert cross_site.status_code == 403
            assert relay.state.store.key(key["id"]).status == "active"
            assert (await browser.client.post(revoke, data=good)).status_code == 303
            assert relay.state.store.key(key["id"]).status == "revoked"
        async with Browser(relay) as anonymous:
            # Sign-in itself needs the pre-session token (no login CSRF).
            response = await anonymous.client.post(
                "/console/login", data={"email": "o@acme.test", "password": PASSWORD}
            )
            assert response.status_code == 403


async def test_password_change_ends_every_other_session(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        account = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=account["id"])
        home = f"/console/a/{account['id']}"
        async with Browser(relay) as laptop, Browser(relay) as phone:
            await laptop.login("o@acme.test")
            await phone.login("o@acme.test")
            wrong = await laptop.submit(
                "/console/password",
                "/console/password",
                {
                    "current_password": "not it at all",
                    "new_password": "a brand new secret",
                    "new_password_again": "a brand new secret",
                },
            )
            assert wrong.status_code == 400
            changed = await laptop.submit(
                "/console/password",
                "/console/password",
                {
                    "current_password": PASSWORD,
                    "new_password": "a brand new secret",
                    "new_password_again": "a brand new secret",
                },
            )
            assert changed.status_code == 303
            assert (await laptop.get(home)).status_code == 200  # a fresh session here
            assert (await phone.get(home)).status_code == 303  # signed out there
            assert (await phone.login("o@acme.test")).status_code == 401
            assert (await phone.login("o@acme.test", "a brand new secret")).status_code == 303


async def test_next_parameter_cannot_redirect_off_site(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        account = await relay.create_account("acme")
        await create_user(relay, "o@acme.test", account=account["id"])
        async with Browser(relay) as browser:
            response = await browser.submit(
                "/console/login",
                "/console/login",
                {"email": "o@acme.test", "password": PASSWORD, "next": "//evil.example/x"},
            )
            assert response.headers["location"] == "/console/"


async def test_roles_are_enforced_per_account_and_per_key(
    monkeypatch: pytest.MonkeyPatch, relay_dir: Path
) -> None:
    async with console_relay(monkeypatch, relay_dir) as relay:
        account = await relay.create_account("acme")
        acme = f"/console/a/{account['id']}"
        admin_key = await relay.create_key(account["id"], name="admin-made")
        for email, role in (("m@a.test", "member"), ("v@a.test", "viewer"), ("a@a.test", "admin")):
            await create_user(relay, email, account=account["id"], role=role)
        async with Browser(relay) as viewer:
            await viewer.login("v@a.test")
            assert (await viewer.get(acme + "/keys")).status_code == 200
            assert "Create a key" not in (await viewer.get(acme + "/keys")).text
            created = await viewer.submit(acme + "/keys", acme + "/keys", {"name": "nope"})
            assert created.status_code == 403
            assert (await viewer.get(acme + "/billing")).status_code == 403
        async with Browser(relay) as member:
            await member.login("m@a.test")
            created = await member.submit(acme + "/keys", acme + "/keys", {"name": "mine"})
            assert created.status_code == 303  # POST-redirect-GET; the secret waits in a flash
            own = next(k for k in relay.state.store.keys.values() if k.label == "mine")
            other = await member.submit(acme + "/keys", f"{acme}/keys/{admin_key['id']}/revoke")
            assert other.status_code == 403
            mine = await member.submit(acme + "/keys", f"{acme}/keys/{own.id}/revoke")
            assert mine.status_code == 303
            assert relay.state.store.key(own.id).status == "revoked"
            assert (await member.get(acme + "/members")).status_code == 403
            assert (await member.get("/console/operator/accounts")).status_code == 404
        async with Browser(relay) as admin:
            await admin.login("a@a.test")
            revoked = await admin.submit(acme + "/keys", f"{acme}/keys/{admin_key['id']}/revoke")
            assert revoked.status_code == 303
        audit = await relay.audit()
        actors = {(row["action"], row["target"]): row["actor"] for row in audit}
        assert actors[("key.revoke", own.id)] == "m@a.test"
        assert actors[("key.revoke", admin_key["id"])] == "a@a.test"
        assert actors[("key.create", own.id)] == "m@a.test"
