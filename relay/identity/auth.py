"""Who is calling: a client key (``rk_...``) or the operator's admin token.

Client keys are checked against their argon2id hash once per process: after that a
keyed digest in ``VerifiedKeyCache`` answers in O(1), and concurrent first requests
of one key share a single verification. Status, expiry and account suspension are read
from the in-memory records on every request, so a revoke binds the next request.
Messages say what is wrong without echoing the credential.

The admin token is also accepted on the data plane, as the operator's unbilled,
unlimited principal (for smoke tests); its requests are logged with no account.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relay.errors import AuthError, Forbidden, RateLimited
from relay.identity.accounts import Account, AccountStore, ApiKey
from relay.identity.keys import KEY_PREFIX, CacheLookup, ParsedKey, VerifiedKeyCache, parse_key

__all__ = ["ADMIN", "ANONYMOUS", "Authenticator", "Principal", "bearer_token"]


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "key", "admin" (the operator's token) or "anonymous" (not yet known)
    key: ApiKey | None = None
    account: Account | None = None

    @property
    def account_id(self) -> str | None:
        return self.account.id if self.account else None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


ADMIN = Principal("admin")
# Who a request is until authentication has run (for the usage row of a refused one).
ANONYMOUS = Principal("anonymous")


def bearer_token(headers: Mapping[str, str], *, allow_x_api_key: bool = False) -> str | None:
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthError("Malformed Authorization header: expected 'Bearer <key>'")
    if allow_x_api_key:
        return headers.get("x-api-key") or None
    return None


# Wrong secrets tolerated per known key id and minute before argon2 stops being run for it.
MAX_KEY_FAILURES_PER_MINUTE = 10


class _FailedSecrets:
    """Wrong secrets per key id in the current minute: each costs an argon2 run (~20 ms).

    Only ids of existing keys are counted (an unknown id is refused without argon2), so
    the table is bounded by the number of keys; a minute's counts are dropped whole.
    """

    __slots__ = ("_counts", "_limit", "_minute", "_clock")

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._minute = -1
        self._counts: dict[str, int] = {}

    def _roll(self) -> float:
        now = self._clock()
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._counts = minute, {}
        return now

    def check(self, key_id: str) -> None:
        now = self._roll()
        if self._counts.get(key_id, 0) >= self._limit:
            raise RateLimited(
                "Too many wrong secrets for this API key; retry later",
                retry_after_s=60 - now % 60,
            )

    def failed(self, key_id: str) -> None:
        self._roll()
        self._counts[key_id] = self._counts.get(key_id, 0) + 1


class Authenticator:
    def __init__(
        self,
        admin_token: str | None,
        store: AccountStore,
        cache: VerifiedKeyCache,
        *,
        max_key_failures_per_minute: int = MAX_KEY_FAILURES_PER_MINUTE,
    ):
        self._admin_token = admin_token.encode() if admin_token else None
        self._store = store
        self._cache = cache
        self._verifying: dict[str, asyncio.Future[bool]] = {}
        self._failures = _FailedSecrets(max_key_failures_per_minute)

    @property
    def admin_enabled(self) -> bool:
        return self._admin_token is not None

    def is_admin_token(self, token: str) -> bool:
        return self._admin_token is not None and hmac.compare_digest(
            token.encode(), self._admin_token
        )

    def forget_key(self, key_id: str) -> None:
        self._cache.forget(key_id)

    async def authenticate(
        self, headers: Mapping[str, str], *, allow_x_api_key: bool = False
    ) -> Principal:
        token = bearer_token(headers, allow_x_api_key=allow_x_api_key)
        if token is None:
            raise AuthError("Missing API key: send 'Authorization: Bearer <key>'")
        if token.startswith(KEY_PREFIX):
            parsed = parse_key(token)
            key = self._store.keys.get(parsed.key_id)
            if key is not None and self._cache.lookup(parsed) is CacheLookup.VERIFIED:
                # The usual request (a loaded key, verified before): nothing to wait
                # for, so no coroutine of its own in the request's await chain.
                return self._admit(key)
            return await self._authenticate_key(parsed)
        if self.is_admin_token(token):
            return ADMIN
        raise AuthError("Malformed API key: relay keys start with 'rk_'")

    async def _authenticate_key(self, parsed: ParsedKey) -> Principal:
        key = self._store.keys.get(parsed.key_id)
        if key is None:
            key = await self._store.find_new_key(parsed.key_id)
        if key is None:
            raise AuthError("Invalid API key: unknown key")
        lookup = self._cache.lookup(parsed)
        if lookup is CacheLookup.MISMATCH:
            raise AuthError("Invalid API key: unknown key")
        if lookup is CacheLookup.UNKNOWN:
            # A guessed secret for a known id costs an argon2 run: bounded per key id.
            self._failures.check(parsed.key_id)
            if not await self._verify_once(parsed):
                self._failures.failed(parsed.key_id)
                raise AuthError("Invalid API key: unknown key")
        return self._admit(key)

    def _admit(self, key: ApiKey) -> Principal:
        """Status, expiry and suspension, read afresh on every request (after the secret)."""
        if key.status == "revoked":
            raise AuthError("Invalid API key: this key was revoked")
        now_ms = int(time.time() * 1000)
        if key.expired(now_ms):
            raise AuthError("Invalid API key: this key has expired")
        if key.status == "suspended":
            raise Forbidden("This API key is suspended", code="key_suspended")
        account = self._store.accounts[key.account_id]
        if account.status != "active":
            raise Forbidden("This account is suspended", code="account_suspended")
        self._store.used_keys[key.id] = now_ms
        return Principal("key", key, account)

    async def _verify_once(self, parsed: ParsedKey) -> bool:
        """argon2 verify off the loop; concurrent first requests of a key share one run."""
        pending = self._verifying.get(parsed.key_id)
        if pending is not None:
            ok = await asyncio.shield(pending)
            return ok and self._cache.lookup(parsed) is CacheLookup.VERIFIED
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._verifying[parsed.key_id] = future
        try:
            stored = self._store.key_hashes[parsed.key_id]
            hasher = self._store.hasher
            ok = await asyncio.to_thread(hasher.verify, stored, parsed.full_key)
            if ok:
                self._cache.remember(parsed)
            future.set_result(ok)
            return ok
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # handed to any waiter, then re-raised here
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unawaited failure is not reported
            raise
        finally:
            del self._verifying[parsed.key_id]
