"""People in cluster mode (issue 18, part D): console users, sessions, invites, password
resets and tickets as PostgreSQL's rows, shared by every instance.

Two relays are served in this process on one cluster config (each its own pool, lease and
Redis client) against the throwaway engines of tests/support_cluster.py; checks read
PostgreSQL directly. Both instances read the one server secret file beside the configured
database path, so a cookie or link signed by one is genuine on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import config_text
from support_accounts import Relay, run_relay
from support_console import PASSWORD, Browser, create_user, csrf_of

from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_schema import migrate
from relay.cluster.pg_users import PgUserStore
from relay.config import Config, parse_config
from relay.console.auth.sessions import SESSION_COOKIE
from relay.identity.accounts import Conflict
from relay.identity.audit import AUDIT_COLUMNS, verify_chain
from relay.identity.roles import Role

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

_AUDIT_KEY = b"a" * 32


def cluster_config(tmp_path: Path, dsn: str, redis_port: int) -> Config:
    db = 1 + secrets.randbelow(15)
    section = (
        f'\n[storage]\nurl = "{dsn}"\n'
        f'\n[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/{db}"\nlease_s = 3\n'
    )
    text = config_text(tmp_path / "relay.db", extra=section)
    return parse_config(text, base_dir=str(tmp_path))


@contextlib.asynccontextmanager
async def two_instances(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> AsyncIterator[tuple[Relay, Relay]]:
    config = cluster_config(tmp_path, pg_database, redis_server.port)
    async with run_relay(config) as one, run_relay(config) as two:
        yield one, two


@contextlib.asynccontextmanager
async def pg(dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _account_on_both(one: Relay, two: Relay, name: str) -> dict[str, Any]:
    """An account made through ``one``, once ``two`` has heard of it (the bus's delivery)."""
    account = await one.create_account(name)
    for _ in range(100):
        if (await two.client.get(f"/admin/accounts/{account['id']}")).status_code == 200:
            return account
        await asyncio.sleep(0.02)
    raise AssertionError("the account never reached the second instance")


async def _chain_ok(conn: Any) -> list[str]:
    rows = [tuple(r) for r in await conn.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")]
    actions = [str(row[3]) for row in rows]
    return actions


def _session_cookie(browser: Browser) -> str:
    value = browser.client.cookies.get(SESSION_COOKIE)
    assert value, "not signed in"
    return value


async def _moved_to(browser: Browser, cookie: str) -> None:
    browser.client.cookies.set(SESSION_COOKIE, cookie, domain="127.0.0.1", path="/console")


pytestmark = pytest.mark.usefixtures("admin_token")


async def test_admin_users_are_postgresql_rows_read_by_every_instance(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        made = await create_user(one, "Owner@Acme.test", account=acme["id"], role="owner")
        assert made["memberships"] == [
            {"account_id": acme["id"], "account": "acme", "role": "owner"}
        ]
        listed = (await two.client.get("/admin/users")).json()["data"]
        assert [u["email"] for u in listed] == ["owner@acme.test"]
        assert listed[0]["memberships"][0]["role"] == "owner"
        # One email created through both instances at once: the unique index lets one in.
        body = {"email": "race@acme.test", "password": PASSWORD, "operator": True}
        answers = await asyncio.gather(
            one.client.post("/admin/users", json=body), two.client.post("/admin/users", json=body)
        )
        assert sorted(a.status_code for a in answers) == [201, 409]
        # Nothing written to either instance's scratch file.
        assert await one.rows("SELECT * FROM console_users") == []
        assert await two.rows("SELECT * FROM console_users") == []
        async with pg(pg_database) as conn:
            assert await conn.fetchval("SELECT count(*) FROM console_users") == 2
            actions = await _chain_ok(conn)
        assert actions.count("user.create") == 2 and actions.count("member.set") == 1
        for relay in (one, two):
            assert (await relay.client.get("/admin/audit/verify")).json()["ok"] is True


async def test_a_session_made_on_one_instance_is_valid_on_the_other_until_signed_out(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        await create_user(two, "o@acme.test", account=acme["id"])  # made through the other
        members = f"/console/a/{acme['id']}/members"
        async with Browser(one) as first, Browser(two) as second:
            signed_in = await first.login("o@acme.test")
            assert signed_in.status_code == 303, signed_in.text
            cookie = _session_cookie(first)
            assert (await second.get(members)).status_code in (302, 303)  # not signed in yet
            await _moved_to(second, cookie)
            page = await second.get(members)
            assert page.status_code == 200 and "o@acme.test" in page.text
            # A form signed on instance 2 (its CSRF token is bound to the shared session).
            out = await second.submit(members, "/console/logout")
            assert out.status_code == 303
            assert (await first.get(members)).status_code in (302, 303)
        async with pg(pg_database) as conn:
            assert await conn.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_a_password_changed_on_one_instance_ends_sessions_on_the_other(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        await create_user(one, "o@acme.test", account=acme["id"])
        members = f"/console/a/{acme['id']}/members"
        async with Browser(one) as first, Browser(two) as second:
            await first.login("o@acme.test")
            await second.login("o@acme.test")
            new = "a brand new passphrase"
            changed = await second.submit(
                "/console/password",
                "/console/password",
                {"current_password": PASSWORD, "new_password": new, "new_password_again": new},
            )
            assert changed.status_code == 303, changed.text
            assert (await second.get(members)).status_code == 200  # its fresh session
            assert (await first.get(members)).status_code in (302, 303)  # ended everywhere
            async with Browser(one) as again:
                assert (await again.login("o@acme.test")).status_code != 303
                assert (await again.login("o@acme.test", new)).status_code == 303


async def test_an_invite_made_on_one_instance_is_accepted_once_on_the_other(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        await create_user(one, "o@acme.test", account=acme["id"])
        members = f"/console/a/{acme['id']}/members"
        async with Browser(one) as owner:
            await owner.login("o@acme.test")
            made = await owner.submit(members, members + "/invite", {"role": "admin"})
            assert made.status_code == 303, made.text
            shown = (await owner.get(made.headers["location"])).text  # the flash: same instance
            link = re.search(r'value="(https?://[^"]+/console/invite/[^"]+)"', shown)
            assert link is not None
            path = "/console/invite/" + link.group(1).rsplit("/console/invite/", 1)[1]
        form = {"email": "new@acme.test", "display_name": "New", "password": PASSWORD}
        async with Browser(two) as newcomer, Browser(one) as late:
            assert (await newcomer.get(path)).status_code == 200
            joined = await newcomer.submit(path, path, form)
            assert joined.status_code == 303, joined.text
            # Signed in by the acceptance on instance 2, a member of the account there.
            assert (await newcomer.get(f"/console/a/{acme['id']}/tickets")).status_code == 200
            assert (await late.get(path)).status_code == 404  # once, on every instance
        async with pg(pg_database) as conn:
            role = await conn.fetchval(
                "SELECT m.role FROM console_memberships m JOIN console_users u "
                "ON u.id = m.user_id WHERE u.email = 'new@acme.test'"
            )
            assert role == "admin"
            used = await conn.fetchval("SELECT used_by FROM console_invites")
            assert used is not None
            actions = await _chain_ok(conn)
        assert {"invite.create", "member.set", "user.create"} <= set(actions)


async def test_a_ticket_opened_on_one_instance_is_answered_on_the_other(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        await create_user(one, "o@acme.test", account=acme["id"])
        await create_user(two, "ops@relay.test", operator=True)
        tickets = f"/console/a/{acme['id']}/tickets"
        async with Browser(one) as customer, Browser(two) as operator:
            await customer.login("o@acme.test")
            opened = await customer.submit(
                tickets, tickets, {"subject": "Charged twice?", "body": "See req_1"}
            )
            assert opened.status_code == 303, opened.text
            thread = opened.headers["location"].split("?")[0]
            await operator.login("ops@relay.test")
            assert "Charged twice?" in (await operator.get("/console/operator/tickets")).text
            replied = await operator.submit(thread, thread + "/reply", {"body": "Refunded."})
            assert replied.status_code == 303, replied.text
            page = (await customer.get(thread)).text
            assert "Refunded." in page and "See req_1" in page
        async with pg(pg_database) as conn:
            assert await conn.fetchval("SELECT status FROM console_tickets") == "answered"
            assert await conn.fetchval("SELECT count(*) FROM console_ticket_messages") == 2


async def test_a_user_write_that_fails_leaves_no_row_and_no_audit_row(pg_database: str) -> None:
    pool = await create_pool(pg_database, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        from support_accounts import CountingHasher

        users = PgUserStore(pool, _AUDIT_KEY, CountingHasher())
        # The membership's account does not exist: the foreign key refuses it after the
        # user row and its audit row were written in the same transaction.
        with pytest.raises(Conflict):
            await users.create_user(
                "x@acme.test",
                "X",
                PASSWORD,
                operator=False,
                actor="test",
                membership=("acct_missing", Role.OWNER),
            )
        assert await pool.fetchval("SELECT count(*) FROM console_users") == 0
        assert await pool.fetchval("SELECT count(*) FROM audit") == 0
        user = await users.create_user("y@acme.test", "Y", PASSWORD, operator=True, actor="test")
        assert await users.authenticate("Y@acme.test", PASSWORD) == user
        assert await users.authenticate("y@acme.test", "wrong password!") is None
        assert await users.authenticate("nobody@acme.test", PASSWORD) is None
        rows = [
            tuple(r) for r in await pool.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
        ]
        assert verify_chain(rows, _AUDIT_KEY).ok
    finally:
        await pool.close()


async def test_an_acceptance_that_fails_leaves_the_invite_unused_and_no_membership(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.cluster import pg_audit
    from relay.console.pg_console import PgInviteStore

    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        owner = await create_user(one, "o@acme.test", account=acme["id"])
        newcomer = await create_user(two, "n@other.test", operator=True)
        assert one.state.cluster is not None
        users = PgUserStore(one.state.cluster.pool, _AUDIT_KEY, one.hasher)
        invites = PgInviteStore(one.state.cluster.pool, b"i" * 32, _AUDIT_KEY)
        by, joiner = await users.get(owner["id"]), await users.get(newcomer["id"])
        assert by is not None and joiner is not None
        token = await invites.create(acme["id"], Role.MEMBER, by=by)
        real_append = pg_audit.append

        async def failing_append(conn: Any, key: bytes, **row: Any) -> None:
            if row["action"] == "member.set":
                raise RuntimeError("the audit append failed")
            await real_append(conn, key, **row)

        monkeypatch.setattr(pg_audit, "append", failing_append)
        with pytest.raises(RuntimeError):
            await invites.accept(token, joiner)
        # Rolled back whole: the link still works, no membership, no audit row of it.
        assert await invites.peek(token) is not None
        assert await users.role_in(joiner.id, acme["id"]) is None
        monkeypatch.setattr(pg_audit, "append", real_append)
        assert await invites.accept(token, joiner) is not None
        assert await invites.accept(token, joiner) is None  # once
        assert await users.role_in(joiner.id, acme["id"]) == Role.MEMBER


async def test_one_invite_accepted_on_both_instances_at_once_adds_one_member(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        acme = await _account_on_both(one, two, "acme")
        await create_user(one, "o@acme.test", account=acme["id"])
        members = f"/console/a/{acme['id']}/members"
        async with Browser(one) as owner:
            await owner.login("o@acme.test")
            made = await owner.submit(members, members + "/invite", {"role": "member"})
            shown = (await owner.get(made.headers["location"])).text
            link = re.search(r'value="(https?://[^"]+/console/invite/[^"]+)"', shown)
            assert link is not None
            path = "/console/invite/" + link.group(1).rsplit("/console/invite/", 1)[1]
        async with Browser(one) as first, Browser(two) as second:
            forms = [
                (await browser.client.get(path), browser, email)
                for browser, email in ((first, "a@acme.test"), (second, "b@acme.test"))
            ]
            answers = await asyncio.gather(
                *(
                    browser.client.post(
                        path,
                        data={
                            "csrf_token": csrf_of(page.text),
                            "email": email,
                            "display_name": email,
                            "password": PASSWORD,
                        },
                    )
                    for page, browser, email in forms
                )
            )
        assert sorted(a.status_code for a in answers) == [303, 409]
        async with pg(pg_database) as conn:
            joined = await conn.fetchval(
                "SELECT count(*) FROM console_memberships WHERE account_id = $1 "
                "AND role = 'member'",
                acme["id"],
            )
        assert joined == 1
