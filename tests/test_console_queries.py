"""The console's usage reads: every log query is served by an index in id order (no table
scan, no sort), time ranges map to id ranges, and the charts' helpers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from relay.console.charts import daily_spend_chart, model_spend_chart, nice_ceiling
from relay.console.log_queries import (
    DAY_MS,
    LogFilter,
    daily_spend,
    log_page,
    log_query,
    spend_by_model,
)
from relay.console.templating import format_usd, format_usd_exact
from relay.errors import InvalidRequest
from relay.storage.db import Database
from relay.storage.migrations import apply_migrations
from relay.usage.log import UsageRecord, insert_usage

FILTERS = [
    LogFilter(),
    LogFilter(key_id="k1"),
    LogFilter(model="m"),
    LogFilter(status="ok"),
    LogFilter(status="error"),
    LogFilter(status="429"),
    LogFilter(status="200", model="m"),
    LogFilter(key_id="k1", status="error"),
    LogFilter(model="m", status="502", since="2026-01-01", until="2026-01-02"),
    LogFilter(key_id="k1", model="m", since="2026-01-01"),
]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: repr(f.query()))
def test_log_queries_walk_an_index_in_id_order(flt: LogFilter) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(conn)
    sql, params = log_query("a", flt, below_id=10**9, above_id=0, limit=51)
    plan = " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "USING INDEX usage_" in plan or "USING COVERING INDEX usage_" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    assert "SCAN usage" not in plan or "INDEX" in plan, plan


def test_filters_are_validated() -> None:
    assert LogFilter.from_query({"status": "error", "key": " k "}).key_id == "k"
    for bad in ({"status": "bad"}, {"status": "4000"}, {"since": "2026-13-01"}):
        with pytest.raises(InvalidRequest):
            LogFilter.from_query(bad)
    since, until = LogFilter(since="1970-01-02", until="1970-01-02").time_range()
    assert (since, until) == (DAY_MS, 2 * DAY_MS)


async def test_pages_time_ranges_and_rollups(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0)
    try:
        now = 100 * DAY_MS + 5000
        # One row every 6 hours over 10 days, written in time order like relay does.
        rows = [(f"r{n}", now - (40 - n) * DAY_MS // 4, "a", "k1" if n % 2 else "k2",
                 "m" if n % 3 else "x", 502 if n == 7 else 200, n)
                for n in range(41)]  # fmt: skip

        def write(conn: sqlite3.Connection) -> None:
            for request_id, ts_ms, account, key, model, status, cost in rows:
                record = UsageRecord(
                    request_id=request_id,
                    ts_ms=ts_ms,
                    endpoint="chat",
                    status=status,
                    account_id=account,
                    key_id=key,
                    model=model,
                    cost_micros=cost,
                )
                insert_usage(conn, record)

        await db.write(write)
        page, before = await log_page(db, "a", LogFilter(), limit=15)
        assert [r["request_id"] for r in page] == [f"r{n}" for n in range(40, 25, -1)]
        rest, last = await log_page(db, "a", LogFilter(), before_id=before, limit=100)
        assert len(rest) == 26 and last is None
        day = "1970-04-08"  # day 97: rows 28..31
        dated, _ = await log_page(db, "a", LogFilter(since=day, until=day))
        assert sorted(r["request_id"] for r in dated) == ["r28", "r29", "r30", "r31"]
        assert [r["request_id"] for r in (await log_page(db, "a", LogFilter(status="502")))[0]] == [
            "r7"
        ]
        assert (await log_page(db, "b", LogFilter()))[0] == []

        days = await daily_spend(db, "a", now_ms=now, days=5)
        assert [d for d, _, _ in days] == [96, 97, 98, 99, 100]
        assert days[1] == (97, 28 + 29 + 30 + 31, 4) and days[-1] == (100, 40, 1)
        models = await spend_by_model(db, "a", now_ms=now, days=5)
        assert [m for m, _, _ in models] == ["m", "x"]
    finally:
        await db.close()


def test_chart_helpers() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 11, 2_000_001)] == [1, 1, 5, 10, 20, 5_000_000]
    assert format_usd(2_500_000) == "$2.50"
    assert format_usd(1234) == "<$0.01" and format_usd_exact(1234) == "$0.001234"
    assert format_usd(-5_000_000) == "−$5.00"
    chart = str(daily_spend_chart([(0, 0, 0), (1, 2_000_000, 3)], label="Spend <per> day"))
    assert chart.count('class="bar"') == 2 and "Spend &lt;per&gt; day" in chart
    assert "1970-01-02: $2.00, 3 requests" in chart
    models = str(model_spend_chart([("<script>", 5, 1)], label="By model"))
    assert "<script>" not in models and "&lt;script&gt;" in models
    assert "No spend" in str(model_spend_chart([], label="By model"))
    assert "No spend" in str(daily_spend_chart([(0, 0, 0), (1, 0, 0)], label="Per day"))
    # Today's bar has its own label, centred under it; the axis counts whole cents.
    days = [(d, 30_000 if d == 29 else 0, 1) for d in range(30)]
    today = str(daily_spend_chart(days, label="Per day", today=29))
    assert ">Today</text>" in today and "$0.00</text>" in today and "$0.05</text>" in today
    assert "&lt;$0.01" not in today and "$0.000" not in today
    bar_centre = today.split('<rect class="bar"')[-1]
    assert "</rect>" in bar_centre
    assert str(model_spend_chart([("free", 0, 3)], label="m")).count("<rect") == 0
