"""Accounts (wallet owners) and their API keys: in memory, written through to SQLite.

The process is the only writer, so the in-memory records are the truth for the hot
path: a change is committed (with its audit row, in one transaction) and then swapped
in, so revoke, expire, suspend and edit bind the very next request. Key secrets exist
only as argon2id hashes; records never carry or show them.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from typing import Any, Literal

import msgspec

from relay.errors import InvalidRequest, NotFound, RelayError
from relay.identity.audit import append_audit
from relay.identity.keys import KeyHasher, NewKey, SecretHasher, generate_key, mask_key
from relay.money.budget import BudgetPeriod
from relay.money.ledger import charged_since, load_account_budget
from relay.money.wallet import Wallet
from relay.storage.db import Database

__all__ = [
    "ACCOUNT_ID_PREFIX",
    "Account",
    "AccountStore",
    "ApiKey",
    "Conflict",
    "ENDPOINT_KINDS",
    "audit_summary",
]

AccountMode = Literal["prepaid", "postpaid"]
ENDPOINT_KINDS = (
    "chat",
    "embeddings",
    "images",
    "videos",
    "messages",
    "responses",
    "completions",
    "moderations",
    "transcriptions",
    "translations",
    "speech",
    "image_edits",
)
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ACCOUNT_ID_PREFIX = "acct_"


class Conflict(RelayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Account(msgspec.Struct, frozen=True):
    id: str
    name: str
    mode: AccountMode = "prepaid"
    credit_limit_micros: int = 0
    status: Literal["active", "suspended"] = "active"
    price_multiplier: str = "1"
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    created_at_ms: int = 0
    updated_at_ms: int = 0
    # An account-wide spend budget (0 = none): lifetime, or reset each budget_period.
    budget_micros: int = 0
    budget_period: BudgetPeriod | None = None


class ApiKey(msgspec.Struct, frozen=True):
    id: str
    account_id: str
    label: str
    last4: str
    models: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    spend_cap_micros: int = 0
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 100
    price_multiplier: str = "1"
    expires_at_ms: int | None = None
    status: Literal["active", "revoked", "suspended"] = "active"
    created_at_ms: int = 0
    updated_at_ms: int = 0
    # None: spend_cap_micros is lifetime; else it applies to each calendar period (UTC).
    budget_period: BudgetPeriod | None = None

    @property
    def masked(self) -> str:
        return mask_key(self.id, self.last4)

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms


_ACCOUNT_COLUMNS = tuple(Account.__struct_fields__)
_KEY_COLUMNS = tuple(ApiKey.__struct_fields__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_account_id() -> str:
    return ACCOUNT_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def _key_row(key: ApiKey) -> tuple[Any, ...]:
    values = msgspec.structs.astuple(key)
    return tuple(
        msgspec.json.encode(list(v)).decode() if isinstance(v, tuple) else v for v in values
    )


def _upsert(table: str, columns: tuple[str, ...]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("id", "created_at_ms"))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT(id) DO UPDATE SET {updates}"
    )


_UPSERT_ACCOUNT = _upsert("accounts", _ACCOUNT_COLUMNS)
_INSERT_KEY = (
    f"INSERT INTO api_keys ({', '.join(_KEY_COLUMNS)}, secret_hash) "
    f"VALUES ({', '.join('?' for _ in _KEY_COLUMNS)}, ?)"
)
_UPDATE_KEY = (
    "UPDATE api_keys SET "
    + ", ".join(f"{c} = ?" for c in _KEY_COLUMNS if c != "id")
    + " WHERE id = ?"
)


def audit_summary(record: msgspec.Struct | None) -> dict[str, Any] | None:
    return None if record is None else msgspec.structs.asdict(record)


class AccountStore:
    def __init__(
        self,
        db: Database,
        wallet: Wallet,
        audit_key: bytes,
        *,
        hasher: SecretHasher | None = None,
    ):
        self._db = db
        self._wallet = wallet
        self._audit_key = audit_key
        self.hasher: SecretHasher = hasher or KeyHasher()
        self.accounts: dict[str, Account] = {}
        self._names: dict[str, str] = {}
        self.keys: dict[str, ApiKey] = {}
        self.key_hashes: dict[str, str] = {}
        # Keys used since the last flush of last_used_at_ms (batched: no write per request).
        self.used_keys: dict[str, int] = {}

    @property
    def audit_key(self) -> bytes:
        return self._audit_key

    async def load(self) -> None:
        for row in await self._db.fetchall(f"SELECT {', '.join(_ACCOUNT_COLUMNS)} FROM accounts"):
            self._put_account(Account(*tuple(row)))
        select = ", ".join(_KEY_COLUMNS)
        for row in await self._db.fetchall(f"SELECT {select}, secret_hash FROM api_keys"):
            values = list(tuple(row))
            secret_hash = values.pop()
            for i, column in enumerate(_KEY_COLUMNS):
                if column in ("models", "endpoints"):
                    values[i] = tuple(msgspec.json.decode(values[i]))
            key = ApiKey(*values)
            self.keys[key.id] = key
            self.key_hashes[key.id] = secret_hash

    # -- lookups ----------------------------------------------------------------------

    def account(self, id_or_name: str) -> Account:
        account = self.accounts.get(id_or_name)
        if account is None and id_or_name in self._names:
            account = self.accounts[self._names[id_or_name]]
        if account is None:
            raise NotFound(f"No account {id_or_name!r}", code="account_not_found")
        return account

    def key(self, key_id: str) -> ApiKey:
        key = self.keys.get(key_id)
        if key is None:
            raise NotFound(f"No key {key_id!r}", code="key_not_found")
        return key

    async def find_new_key(self, key_id: str) -> ApiKey | None:
        """A key not in memory: None here (this process wrote every key it has). A shared
        store (cluster mode) looks it up, for a key created by another instance an instant
        ago whose announcement has not arrived yet."""
        return None

    def keys_of(self, account_id: str | None) -> list[ApiKey]:
        return [k for k in self.keys.values() if account_id is None or k.account_id == account_id]

    # -- changes (each durable, with its audit row, before the caller answers) -----------

    def _check_new_name(self, name: str, account_id: str | None) -> None:
        """A name must resolve to its own account only: ``account(id_or_name)`` tries ids
        first, so a name equal to another account's id (or name) would act on that account.
        Names shaped like ids are reserved so that no future id can shadow one either."""
        if name in self.accounts and name != account_id:
            raise Conflict(f"{name!r} is another account's id")
        if name.startswith(ACCOUNT_ID_PREFIX):
            raise InvalidRequest(
                f"Account names must not start with {ACCOUNT_ID_PREFIX!r} (reserved for ids)",
                param="name",
            )
        if self._names.get(name, account_id) != account_id:
            raise Conflict(f"An account named {name!r} already exists")

    async def create_account(self, account: Account, *, actor: str) -> Account:
        self._check_new_name(account.name, None)
        now = _now_ms()
        account = msgspec.structs.replace(
            account, id=_new_account_id(), created_at_ms=now, updated_at_ms=now
        )
        await self._write_account(account, None, actor=actor, action="account.create")
        # Cluster mode: this instance's own announcement (or a full reload) may have loaded
        # the committed account already, with these same values.
        if not self._wallet.has_account(account.id):
            self._wallet.load_account(
                account.id,
                mode=account.mode,
                credit_limit_micros=account.credit_limit_micros,
                balance_micros=0,
            )
        if account.budget_micros:
            self._wallet.set_account_budget(
                account.id, account.budget_micros, account.budget_period
            )
        return account

    async def update_account(self, account: Account, *, actor: str) -> Account:
        before = self.accounts[account.id]
        if account.name != before.name:
            self._check_new_name(account.name, account.id)
        account = msgspec.structs.replace(account, updated_at_ms=_now_ms())
        action = "account.update"
        if account.status != before.status:
            action = "account.suspend" if account.status == "suspended" else "account.activate"
        await self._write_account(account, before, actor=actor, action=action)
        self._wallet.set_credit_limit(account.id, account.credit_limit_micros, mode=account.mode)
        if (account.budget_micros, account.budget_period) != (
            before.budget_micros,
            before.budget_period,
        ):
            await self._db.flush()  # charges still queued count in the spend summed below
            await load_account_budget(
                self._db, self._wallet, account.id, account.budget_micros, account.budget_period
            )
        return account

    async def create_key(self, key: ApiKey, *, actor: str) -> tuple[ApiKey, str]:
        new: NewKey = generate_key()
        now = _now_ms()
        key = msgspec.structs.replace(
            key, id=new.key_id, last4=new.last4, created_at_ms=now, updated_at_ms=now
        )
        # argon2 takes tens of milliseconds by design: off the event loop.
        secret_hash = await asyncio.to_thread(self.hasher.hash, new.secret)
        await self._write_key(key, None, actor=actor, action="key.create", secret_hash=secret_hash)
        self.key_hashes[key.id] = secret_hash
        if not self._wallet.has_key(key.id):  # as for a new account, above
            self._wallet.load_key(
                key.id, key.account_id, spend_cap_micros=key.spend_cap_micros, spent_micros=0
            )
        if key.budget_period is not None:
            self._wallet.set_key_budget_period(key.id, key.budget_period)
        return key, new.secret

    async def update_key(self, key: ApiKey, *, actor: str, action: str = "key.update") -> ApiKey:
        before = self.keys[key.id]
        key = msgspec.structs.replace(key, updated_at_ms=_now_ms())
        await self._write_key(key, before, actor=actor, action=action)
        self._wallet.set_spend_cap(key.id, key.spend_cap_micros)
        if key.budget_period != before.budget_period:
            spent = 0
            if key.budget_period is not None:
                await self._db.flush()  # charges still queued count in the period's spend
                since = self._wallet.period_bounds(key.budget_period)[0]
                spent = await charged_since(self._db, since, key_id=key.id)
            self._wallet.set_key_budget_period(key.id, key.budget_period, spent)
        return key

    async def record_action(
        self, *, actor: str, action: str, target: str | None, detail: dict[str, Any]
    ) -> None:
        key = self._audit_key
        await self._db.write(
            lambda conn: append_audit(
                conn, key, actor=actor, action=action, target=target, detail=detail
            )
        )

    async def flush_last_used(self) -> None:
        """Persist when keys were last used (batched, so the hot path never writes)."""
        used, self.used_keys = self.used_keys, {}
        if not used:
            return
        rows = [(ms, key_id) for key_id, ms in used.items()]
        await self._db.write(
            lambda conn: conn.executemany(
                "UPDATE api_keys SET last_used_at_ms = ? WHERE id = ?", rows
            )
        )

    async def last_used(self, key_id: str) -> int | None:
        if key_id in self.used_keys:
            return self.used_keys[key_id]
        row = await self._db.fetchone(
            "SELECT last_used_at_ms FROM api_keys WHERE id = ?", (key_id,)
        )
        return row[0] if row else None

    # -- internals --------------------------------------------------------------------

    def _put_account(self, account: Account) -> None:
        previous = self.accounts.get(account.id)
        if previous is not None and previous.name != account.name:
            self._names.pop(previous.name, None)
        self.accounts[account.id] = account
        self._names[account.name] = account.id

    async def _write_account(
        self, account: Account, before: Account | None, *, actor: str, action: str
    ) -> None:
        audit_key = self._audit_key
        row = msgspec.structs.astuple(account)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_ACCOUNT, row)
            detail = {"before": audit_summary(before), "after": audit_summary(account)}
            append_audit(
                conn, audit_key, actor=actor, action=action, target=account.id, detail=detail
            )

        await self._db.write(write)
        self._put_account(account)

    async def _write_key(
        self,
        key: ApiKey,
        before: ApiKey | None,
        *,
        actor: str,
        action: str,
        secret_hash: str | None = None,
    ) -> None:
        audit_key = self._audit_key
        row = _key_row(key)

        def write(conn: sqlite3.Connection) -> None:
            if secret_hash is not None:
                conn.execute(_INSERT_KEY, (*row, secret_hash))
            else:
                conn.execute(_UPDATE_KEY, (*row[1:], row[0]))
            detail = {"before": audit_summary(before), "after": audit_summary(key)}
            append_audit(conn, audit_key, actor=actor, action=action, target=key.id, detail=detail)

        await self._db.write(write)
        self.keys[key.id] = key
