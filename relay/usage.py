"""Usage records: one metadata-only row per request, group-committed by the writer.

A record never holds prompt or response content (design §4): only who, which model
and provider, tokens, cost, status and timings.
"""

from __future__ import annotations

import sqlite3

import msgspec

from relay.db import Database

__all__ = ["UsageLog", "UsageRecord"]


class UsageRecord(msgspec.Struct):
    request_id: str
    ts_ms: int
    endpoint: str
    status: int
    account_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    upstream_request_id: str | None = None
    error_code: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    units: int = 0
    cost_micros: int = 0
    usage_estimated: bool = False
    latency_ms: int | None = None
    ttfb_ms: int | None = None


_COLUMNS = tuple(UsageRecord.__struct_fields__)
_INSERT = f"INSERT INTO usage ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


def insert_usage(conn: sqlite3.Connection, record: UsageRecord) -> None:
    conn.execute(_INSERT, msgspec.structs.astuple(record))


class UsageLog:
    def __init__(self, db: Database):
        self._db = db

    def record(self, record: UsageRecord) -> None:
        """Queue the row; the writer commits it within one flush interval."""
        self._db.enqueue(lambda conn: insert_usage(conn, record))
