"""Many funded accounts for scripts/bench's ``relay-many`` and ``relay-cluster-many`` targets.

The other relay targets send every request with one key of one account: the hot-account
case, where every hold and settlement lands on one row (one wallet entry embedded, one
account row lock in PostgreSQL). These targets spread the same load over N accounts of one
key each: ``enroll_many`` creates them through the admin API (as ``relay account create``
and ``relay key create`` would, but over one connection per worker rather than a process
per call) and writes their secrets, one a line, to the file ``bench_chat.lua`` cycles
through (``BENCH_KEYS_FILE``). ``verify_every_key`` then sends one request per key before
any measured run: a key's first request runs argon2 (~20 ms of CPU, ``relay.identity.auth``)
and later ones hit the verified-key cache, so without it a run of a few seconds over 1,000
keys would measure mostly first requests.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ACCOUNTS", "enroll_many", "verify_every_key"]

DEFAULT_ACCOUNTS = 1000
_WORKERS = 8
# As the one bench account's: limits on the path, none ever reached; funds for any run.
_CREDIT_USD = "5"
_KEY = {"concurrency": 2000, "rpm": 1_000_000, "tpm": 1_000_000_000, "spend_cap_usd": "4"}


class _Admin:
    """One keep-alive connection to the admin API."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self._connection = http.client.HTTPConnection(host, port, timeout=30)
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: dict[str, Any]) -> Any:
        self._connection.request(method, path, body=json.dumps(body), headers=self._headers)
        response = self._connection.getresponse()
        payload = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self._connection.close()


def _enroll_range(host: str, port: int, token: str, first: int, count: int) -> list[str]:
    admin = _Admin(host, port, token)
    secrets: list[str] = []
    try:
        for n in range(first, first + count):
            account = admin.call("POST", "/admin/accounts", {"name": f"bench-{n:05d}"})
            path = f"/admin/accounts/{account['id']}"
            credit = {"amount_usd": _CREDIT_USD, "reference": f"bench-credit-{n}"}
            admin.call("POST", f"{path}/credits", credit)
            key = admin.call("POST", f"{path}/keys", {"name": f"bench-{n:05d}", **_KEY})
            secrets.append(str(key["secret"]))
    finally:
        admin.close()
    return secrets


def enroll_many(host: str, port: int, token: str, count: int, keys_file: Path) -> str:
    """``count`` funded accounts of one key each; their secrets go to ``keys_file``, one a
    line, in enrolment order. Returns the first secret (the one-request checks use it)."""
    if count < 1:
        raise ValueError("enroll_many needs at least one account")
    share = -(-count // _WORKERS)
    ranges = [(first, min(share, count - first)) for first in range(0, count, share)]
    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        parts = pool.map(lambda r: _enroll_range(host, port, token, *r), ranges)
        secrets = [secret for part in parts for secret in part]
    keys_file.write_text("\n".join(secrets) + "\n")
    return secrets[0]


def _first_requests(host: str, port: int, body: bytes, secrets: list[str]) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        for secret in secrets:
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
            connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"a key's first request: {response.status} {answer[:300]!r}")
    finally:
        connection.close()


def verify_every_key(host: str, port: int, body: bytes, keys_file: Path) -> None:
    """One request per key of ``keys_file`` (8 at a time), each answered 200."""
    secrets = keys_file.read_text().split()
    parts = [secrets[i::_WORKERS] for i in range(_WORKERS)]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(lambda part: _first_requests(host, port, body, part), parts))
