"""The console's one-time flashes and the sign-in and admin-token throttles in cluster mode
(issue 18, part B): kept in the cluster's Redis, so a redirect that lands on another
instance finds its flash, and N instances allow the guesses of one.

Two relays served in this process on one cluster config against the throwaway engines of
tests/support_cluster.py. A Redis that does not answer is a real one: a client on a
loopback port nothing listens on (connection refused), swapped in for one store only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support_accounts import Relay, run_relay
from support_cluster import _free_port
from support_console import PASSWORD, Browser, create_user
from test_cluster_people import _account_on_both, _moved_to, _session_cookie, cluster_config

from relay.cluster.redis_failures import RedisFailures
from relay.config import Config
from relay.console.auth.sessions import SESSION_COOKIE
from relay.console.auth.throttle import PER_EMAIL, PER_IP
from relay.console.flash import TTL_MS
from relay.console.redis_flash import RedisFlashStore
from relay.http.admin_throttle import MAX_FAILURES
from relay.http.failures import Taken

redis_asyncio = pytest.importorskip("redis.asyncio")
pytest.importorskip("asyncpg")

pytestmark = pytest.mark.usefixtures("admin_token")

_SECRET = re.compile(r'id="new-secret" class="mono" readonly value="([^"]+)"')


@contextlib.asynccontextmanager
async def _cluster(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> AsyncIterator[tuple[Relay, Relay, Any]]:
    """Two instances and a client on their Redis database, emptied afterwards (the
    session's Redis is shared: counts left behind would throttle another test)."""
    config = cluster_config(tmp_path, pg_database, redis_server.port)
    redis = _redis_of(config)
    # Earlier tests' flashes may still be in the shared Redis: start from an empty one.
    await redis.flushdb()
    try:
        async with run_relay(config) as one, run_relay(config) as two:
            yield one, two, redis
    finally:
        await redis.flushdb()
        await redis.aclose()


def _redis_of(config: Config) -> Any:
    assert config.cluster is not None
    return redis_asyncio.Redis.from_url(config.cluster.redis_url)


def _unreachable_redis() -> Any:
    """A client whose every call fails as a Redis that is down does (connection refused)."""
    return redis_asyncio.Redis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=0.5)


def _failures_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RedisFailures``' checks as they run when Redis is down."""
    real_take, real_retry_after = RedisFailures.take, RedisFailures.retry_after

    def unreachable() -> RedisFailures:
        return RedisFailures(_unreachable_redis(), "x", limit=1, window_s=1)

    async def take(self: RedisFailures, key: str) -> Taken:
        return await real_take(unreachable(), key)

    async def retry_after(self: RedisFailures, key: str) -> float:
        return await real_retry_after(unreachable(), key)

    monkeypatch.setattr(RedisFailures, "take", take)
    monkeypatch.setattr(RedisFailures, "retry_after", retry_after)


async def _owner_on_one(one: Relay, two: Relay) -> tuple[str, str]:
    """An account known to both instances and its owner's user; (account id, email)."""
    acme = await _account_on_both(one, two, "acme")
    await create_user(one, "o@acme.test", account=acme["id"])
    return acme["id"], "o@acme.test"


async def _flash_keys(redis: Any) -> list[bytes]:
    return [key async for key in redis.scan_iter(match="relay:flash:*")]


async def test_a_flash_made_on_one_instance_is_read_once_on_the_other(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with _cluster(tmp_path, pg_database, redis_server) as (one, two, redis):
        account, email = await _owner_on_one(one, two)
        keys = f"/console/a/{account}/keys"
        async with Browser(one) as first, Browser(two) as second, Browser(two) as stranger:
            await first.login(email)
            await stranger.login(email)  # the same user, another session
            created = await first.submit(keys, keys, {"name": "ci"})
            assert created.status_code == 303, created.text
            location = created.headers["location"]
            assert "flash=" in location and "rk_" not in location
            # In Redis with the TTL of the embedded store, never without one.
            (stored,) = await _flash_keys(redis)
            assert 0 < await redis.pttl(stored) <= TTL_MS
            # Another session cannot read it, and trying does not use it up.
            assert _SECRET.search((await stranger.get(location)).text) is None
            await _moved_to(second, _session_cookie(first))
            shown = await second.get(location)
            found = _SECRET.search(shown.text)
            assert shown.status_code == 200 and found is not None
            assert found.group(1).startswith("rk_")
            # Read once: gone from Redis, and neither instance shows it again.
            assert await _flash_keys(redis) == []
            assert _SECRET.search((await second.get(location)).text) is None
            assert _SECRET.search((await first.get(location)).text) is None
        # The secret works: the key it names was created.
        chat = await two.client.get("/v1/models", headers={"authorization": f"Bearer {found[1]}"})
        assert chat.status_code == 200, chat.text


async def test_a_secret_that_cannot_be_kept_is_never_lost_silently(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _cluster(tmp_path, pg_database, redis_server) as (one, two, _):
        account, email = await _owner_on_one(one, two)
        keys = f"/console/a/{account}/keys"
        async with Browser(one) as owner:
            await owner.login(email)
            real_put = RedisFlashStore.put

            async def down(self: RedisFlashStore, owner: str, values: dict[str, str]) -> str:
                return await real_put(RedisFlashStore(_unreachable_redis()), owner, values)

            monkeypatch.setattr(RedisFlashStore, "put", down)
            created = await owner.submit(keys, keys, {"name": "lost"})
            # The key exists; the page says so and says what to do, and shows no secret.
            assert created.status_code == 503, created.text
            assert "Key “lost” created." in created.text
            assert "revoke this key" in created.text
            assert "rk_" not in created.text
            listed = (await one.client.get(f"/admin/keys?account={account}")).json()["data"]
            assert [k["name"] for k in listed] == ["lost"]
            # An invite link likewise: made, not shown, and the page says what to do.
            members = f"/console/a/{account}/members"
            invited = await owner.submit(members, members + "/invite", {"role": "admin"})
            assert invited.status_code == 503 and "revoke the new invite" in invited.text
            assert "/console/invite/" not in invited.text
            # A flash that only confirms is dropped: the change's redirect still happens.
            ref = re.search(r'name="invite" value="([^"]+)"', (await owner.get(members)).text)
            assert ref is not None
            revoked = await owner.submit(members, members + "/invites/revoke", {"invite": ref[1]})
            assert revoked.status_code == 303, revoked.text
            assert "flash=" not in revoked.headers["location"]


async def test_a_flash_that_cannot_be_read_waits_for_a_reload(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _cluster(tmp_path, pg_database, redis_server) as (one, two, redis):
        account, email = await _owner_on_one(one, two)
        keys = f"/console/a/{account}/keys"
        async with Browser(one) as owner:
            await owner.login(email)
            created = await owner.submit(keys, keys, {"name": "ci"})
            location = created.headers["location"]

            real_take = RedisFlashStore.take

            async def down(self: RedisFlashStore, owner: str, token: str) -> dict[str, str] | None:
                return await real_take(RedisFlashStore(_unreachable_redis()), owner, token)

            with monkeypatch.context() as patch:
                patch.setattr(RedisFlashStore, "take", down)
                failed = await owner.get(location)
                assert failed.status_code == 503 and "reload" in failed.text
                assert "rk_" not in failed.text
            assert len(await _flash_keys(redis)) == 1  # still there, until its TTL
            again = await owner.get(location)
            assert again.status_code == 200 and _SECRET.search(again.text) is not None


async def _sign_in(browser: Browser, email: str, password: str) -> int:
    return (await browser.login(email, password)).status_code


async def test_the_sign_in_throttle_counts_failures_from_every_instance(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with _cluster(tmp_path, pg_database, redis_server) as (one, two, _):
        _, email = await _owner_on_one(one, two)
        async with Browser(one) as first, Browser(two) as second:
            # The per-email limit, spent half on each instance.
            for n in range(PER_EMAIL):
                browser = first if n % 2 else second
                assert await _sign_in(browser, email, "wrong password") == 401
            # Refused on both now, the right password included, without a session.
            for browser in (first, second):
                assert await _sign_in(browser, email, PASSWORD) == 429
                assert browser.client.cookies.get(SESSION_COOKIE) is None
            # The per-IP limit, across emails and instances (PER_EMAIL failures are in).
            for n in range(PER_IP - PER_EMAIL):
                browser = first if n % 2 else second
                assert await _sign_in(browser, f"nobody{n}@x.test", "guess") == 401
            assert await _sign_in(first, "someone-else@x.test", "guess") == 429
            assert await _sign_in(second, "someone-else@x.test", "guess") == 429


async def test_sign_in_fails_closed_when_redis_does_not_answer(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _cluster(tmp_path, pg_database, redis_server) as (one, two, _):
        _, email = await _owner_on_one(one, two)

        async with Browser(one) as browser:
            await browser.get("/console/login")  # its CSRF token while Redis answers
            _failures_down(monkeypatch)
            refused = await browser.login(email)
            assert refused.status_code == 503, refused.text
            assert "Sign-in is unavailable" in refused.text
            assert browser.client.cookies.get(SESSION_COOKIE) is None
            monkeypatch.undo()
            assert (await browser.login(email)).status_code == 303


def _guesser(relay: Relay, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=relay.base_url, headers={"authorization": f"Bearer {token}"}, timeout=10.0
    )


async def test_the_admin_token_throttle_counts_guesses_from_every_instance(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with _cluster(tmp_path, pg_database, redis_server) as (one, two, _):
        async with (
            _guesser(one, "not-the-token-1") as first,
            _guesser(two, "not-the-token-2") as second,
            _guesser(one, admin_token) as right_on_one,
            _guesser(two, admin_token) as right_on_two,
        ):
            for n in range(MAX_FAILURES):
                guess = await (first if n % 2 else second).get("/admin/accounts")
                assert guess.status_code == 401, guess.text
            for client in (first, second, right_on_one, right_on_two):
                refused = await client.get("/admin/accounts")
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["retry-after"]) > 0


async def test_the_admin_token_throttle_fails_closed_when_redis_does_not_answer(
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _cluster(tmp_path, pg_database, redis_server) as (one, two, _):
        account = await _account_on_both(one, two, "acme")
        key = await one.create_key(account["id"])
        await one.credit(account["id"], "5", "seed")

        _failures_down(monkeypatch)
        async with _guesser(two, admin_token) as admin, _guesser(two, key["secret"]) as customer:
            refused = await admin.get("/admin/accounts")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_unavailable"
            # A relay key never goes through the admin-token throttle.
            assert (await customer.get("/v1/models")).status_code == 200
