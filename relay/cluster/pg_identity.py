"""Accounts and keys in PostgreSQL: the records every instance authenticates against.

In cluster mode each instance keeps the embedded ``AccountStore``'s in-memory records (the
hot path reads them, as embedded: no round trip per request) and this subclass writes them
through to PostgreSQL instead of SQLite. A change is committed first, then announced on the
``InvalidationBus`` (``publish``); every other instance reloads the record named (``reload_
key`` / ``reload_account``), so a revoke or a suspension binds the next request on every
instance within the bus's delivery time (milliseconds; the heartbeat's version check
catches a lost message within a second). Columns are the embedded schema's.

Every write appends its audit row to PostgreSQL's hash chain in the same transaction
(``relay.cluster.pg_audit``), serialised across instances.

The money side of a row (``balance_micros``, ``spent_micros``, holds) is never written here:
it belongs to ``PgMoneyStore`` and the ledger's triggers. Budgets (an account's budget, a
key's budget period) are columns here, enforced by ``relay_hold`` (relay.cluster.pg_budgets).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from relay.cluster import pg_audit
from relay.identity.accounts import Account, AccountStore, ApiKey, Conflict, audit_summary

__all__ = ["ClusterAccountStore"]

log = logging.getLogger(__name__)

_ACCOUNT_COLUMNS = tuple(Account.__struct_fields__)
_KEY_COLUMNS = tuple(ApiKey.__struct_fields__)
_LIST_COLUMNS = ("models", "endpoints")


def _upsert(table: str, columns: tuple[str, ...], keep: tuple[str, ...]) -> str:
    values = ", ".join(f"${i + 1}" for i in range(len(columns)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keep)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
        f" ON CONFLICT (id) DO UPDATE SET {updates}"
    )


_UPSERT_ACCOUNT = _upsert("accounts", _ACCOUNT_COLUMNS, ("id", "created_at_ms"))
_INSERT_KEY = (
    f"INSERT INTO api_keys ({', '.join(_KEY_COLUMNS)}, secret_hash)"
    f" VALUES ({', '.join(f'${i + 1}' for i in range(len(_KEY_COLUMNS) + 1))})"
)
_UPDATE_KEY = (
    "UPDATE api_keys SET "
    + ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(_KEY_COLUMNS[1:]))
    + " WHERE id = $1"
)
_SELECT_ACCOUNTS = f"SELECT {', '.join(_ACCOUNT_COLUMNS)} FROM accounts"
_SELECT_KEYS = f"SELECT {', '.join(_KEY_COLUMNS)}, secret_hash FROM api_keys"


def _key_values(key: ApiKey) -> list[Any]:
    return [
        msgspec.json.encode(list(v)).decode() if isinstance(v, tuple) else v
        for v in msgspec.structs.astuple(key)
    ]


def _account_of(row: Any) -> Account:
    return Account(*[row[c] for c in _ACCOUNT_COLUMNS])


def _key_of(row: Any) -> ApiKey:
    values: list[Any] = [
        tuple(msgspec.json.decode(row[c])) if c in _LIST_COLUMNS else row[c] for c in _KEY_COLUMNS
    ]
    return ApiKey(*values)


_UNIQUE_VIOLATION = "23505"

Publish = Callable[[str, str], Awaitable[object]]


class ClusterAccountStore(AccountStore):
    """``AccountStore`` over PostgreSQL; ``publish(kind, target)`` announces each change."""

    def __init__(self, pool: Any, publish: Publish, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = pool
        self._publish = publish

    async def load(self) -> None:
        for row in await self._pool.fetch(_SELECT_ACCOUNTS + " WHERE name IS NOT NULL"):
            self._put_cluster_account(_account_of(row))
        for row in await self._pool.fetch(_SELECT_KEYS + " WHERE secret_hash IS NOT NULL"):
            self._put_key(row)

    def _put_cluster_account(self, account: Account) -> None:
        self._put_account(account)
        # The base class keeps its (local, unused for money) wallet in step with the records
        # it edits; money itself is PgMoneyStore's.
        if not self._wallet.has_account(account.id):
            self._wallet.load_account(
                account.id,
                mode=account.mode,
                credit_limit_micros=account.credit_limit_micros,
                balance_micros=0,
            )

    def _put_key(self, row: Any) -> None:
        key = _key_of(row)
        self.keys[key.id] = key
        self.key_hashes[key.id] = row["secret_hash"]
        if not self._wallet.has_key(key.id) and self._wallet.has_account(key.account_id):
            self._wallet.load_key(
                key.id, key.account_id, spend_cap_micros=key.spend_cap_micros, spent_micros=0
            )

    async def reload_all(self) -> None:
        """Everything again (a lost invalidation message): records only ever replace."""
        await self.load()

    async def reload_key(self, key_id: str) -> None:
        row = await self._pool.fetchrow(_SELECT_KEYS + " WHERE id = $1", key_id)
        if row is not None and row["secret_hash"] is not None:
            self._put_key(row)

    async def reload_account(self, account_id: str) -> None:
        row = await self._pool.fetchrow(_SELECT_ACCOUNTS + " WHERE id = $1", account_id)
        if row is not None and row["name"] is not None:
            self._put_cluster_account(_account_of(row))

    async def find_missing(self, account: str | None, key_id: str | None) -> bool:
        """Read an account (by id or name) or key this instance does not know yet from
        PostgreSQL: created through another instance a moment ago, before its announcement
        arrived. True when something was found (the admin route then tries once more)."""
        found = False
        if account is not None and account not in self.accounts and account not in self._names:
            row = await self._pool.fetchrow(
                _SELECT_ACCOUNTS + " WHERE id = $1 OR name = $1 LIMIT 1", account
            )
            if row is not None and row["name"] is not None:
                self._put_cluster_account(_account_of(row))
                found = True
        if key_id is not None and key_id not in self.keys:
            row = await self._pool.fetchrow(_SELECT_KEYS + " WHERE id = $1", key_id)
            if row is not None and row["secret_hash"] is not None:
                self._put_key(row)
                found = True
        return found

    async def find_new_key(self, key_id: str) -> ApiKey | None:
        # One indexed read per unknown id (guessed ids included): the price of a key created
        # on another instance being usable here before its announcement arrives.
        await self.reload_key(key_id)
        key = self.keys.get(key_id)
        if key is not None and key.account_id not in self.accounts:
            await self.reload_account(key.account_id)
        return key if key is not None and key.account_id in self.accounts else None

    # -- write-through (overrides of AccountStore's SQLite writes) -------------------------

    async def _write_account(
        self, account: Account, before: Account | None, *, actor: str, action: str
    ) -> None:
        detail = {"before": audit_summary(before), "after": audit_summary(account)}
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(_UPSERT_ACCOUNT, *msgspec.structs.astuple(account))
                await self._audit(conn, actor, action, account.id, detail)
        except Exception as exc:
            # Named reason: another instance took the name an instant ago (the unique index
            # is the cluster-wide check; this instance's names may lag by a message).
            if (
                getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION
                and getattr(exc, "constraint_name", None) == "accounts_name"
            ):
                raise Conflict(f"An account named {account.name!r} already exists") from None
            raise
        self._put_account(account)
        await self._publish("account", account.id)

    async def _write_key(
        self,
        key: ApiKey,
        before: ApiKey | None,
        *,
        actor: str,
        action: str,
        secret_hash: str | None = None,
    ) -> None:
        values = _key_values(key)
        detail = {"before": audit_summary(before), "after": audit_summary(key)}
        async with self._pool.acquire() as conn, conn.transaction():
            if secret_hash is not None:
                await conn.execute(_INSERT_KEY, *values, secret_hash)
            else:
                await conn.execute(_UPDATE_KEY, *values)
            await self._audit(conn, actor, action, key.id, detail)
        self.keys[key.id] = key
        await self._publish("key", key.id)

    async def record_action(
        self, *, actor: str, action: str, target: str | None, detail: dict[str, Any]
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._audit(conn, actor, action, target, detail)

    async def _audit(
        self, conn: Any, actor: str, action: str, target: str | None, detail: dict[str, Any]
    ) -> None:
        """The chained audit row, in the transaction of the change it records."""
        await pg_audit.append(
            conn, self.audit_key, actor=actor, action=action, target=target, detail=detail
        )

    async def flush_last_used(self) -> None:
        used, self.used_keys = self.used_keys, {}
        if used:
            await self._pool.executemany(
                "UPDATE api_keys SET last_used_at_ms = GREATEST(COALESCE(last_used_at_ms, 0), $1)"
                " WHERE id = $2",
                [(ms, key_id) for key_id, ms in used.items()],
            )

    async def last_used(self, key_id: str) -> int | None:
        if key_id in self.used_keys:
            return self.used_keys[key_id]
        value = await self._pool.fetchval(
            "SELECT last_used_at_ms FROM api_keys WHERE id = $1", key_id
        )
        return None if value is None else int(value)
