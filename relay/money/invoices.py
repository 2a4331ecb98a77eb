"""Monthly statements: what an account was charged in a calendar month (UTC).

The total comes from the ledger (the source of truth for money); the breakdown by
model and by key comes from the usage rows, which carry the same cost per request.
Rendered as JSON, CSV or a print-ready HTML page (no PDF toolchain needed).
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import msgspec

from relay.csv_cells import csv_text
from relay.money.display import format_usd, usd_cell
from relay.storage.reader import Reader

__all__ = ["Statement", "build_statement", "month_bounds", "render_csv", "render_html"]


class StatementLine(msgspec.Struct):
    group: str  # "model" or "key"
    name: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


class Statement(msgspec.Struct):
    account_id: str
    account_name: str
    mode: str
    month: str
    credit_limit_micros: int
    charges_micros: int
    credits_micros: int
    closing_balance_micros: int
    lines: list[StatementLine]
    generated_at: str
    # Key id → the key's name, so people read names beside the ids of the "key" lines.
    key_names: dict[str, str] = {}


def month_bounds(month: str) -> tuple[int, int]:
    """``YYYY-MM`` → [start, end) in unix milliseconds, UTC."""
    try:
        start = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ValueError("month must be YYYY-MM") from None
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


_BREAKDOWN = (
    "SELECT {column} AS name, COUNT(*) AS requests, SUM(prompt_tokens) AS prompt, "
    "SUM(completion_tokens) AS completion, SUM(cost_micros) AS cost FROM usage "
    "WHERE account_id = ? AND ts_ms >= ? AND ts_ms < ? GROUP BY {column} ORDER BY cost DESC"
)


async def build_statement(
    db: Reader,
    *,
    account_id: str,
    account_name: str,
    mode: str,
    credit_limit_micros: int,
    month: str,
) -> Statement:
    start, end = month_bounds(month)
    labels = {
        row["id"]: row["label"]
        for row in await db.fetchall(
            "SELECT id, label FROM api_keys WHERE account_id = ?", (account_id,)
        )
    }
    lines: list[StatementLine] = []
    for group, column in (("model", "model"), ("key", "key_id")):
        for row in await db.fetchall(_BREAKDOWN.format(column=column), (account_id, start, end)):
            lines.append(
                StatementLine(
                    group=group,
                    name=row["name"] or "-",
                    requests=row["requests"],
                    prompt_tokens=row["prompt"] or 0,
                    completion_tokens=row["completion"] or 0,
                    cost_micros=row["cost"] or 0,
                )
            )
    totals = await db.fetchone(
        "SELECT COALESCE(SUM(CASE WHEN kind = 'charge' THEN -amount_micros END), 0), "
        "COALESCE(SUM(CASE WHEN kind IN ('credit', 'refund') THEN amount_micros END), 0) "
        "FROM ledger WHERE account_id = ? AND created_at_ms >= ? AND created_at_ms < ?",
        (account_id, start, end),
    )
    closing = await db.fetchone(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger "
        "WHERE account_id = ? AND created_at_ms < ?",
        (account_id, end),
    )
    assert totals is not None and closing is not None
    return Statement(
        account_id=account_id,
        account_name=account_name,
        mode=mode,
        month=month,
        credit_limit_micros=credit_limit_micros,
        charges_micros=totals[0],
        credits_micros=totals[1],
        closing_balance_micros=closing[0],
        lines=lines,
        key_names={
            line.name: labels[line.name]
            for line in lines
            if line.group == "key" and line.name in labels
        },
        generated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def render_csv(statement: Statement) -> str:
    """CSV for machines: exact amounts (they add up to the micro-dollar), key names beside ids."""
    header: list[object] = [
        "group",
        "name",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "key_name",
    ]
    rows: list[list[object]] = [header]
    rows.extend(
        [
            line.group,
            line.name,
            line.requests,
            line.prompt_tokens,
            line.completion_tokens,
            usd_cell(line.cost_micros, exact=True),
            statement.key_names.get(line.name, "") if line.group == "key" else "",
        ]
        for line in statement.lines
    )
    # The total row keeps its six cells (scripts read the last line as it always was).
    rows.append(["total", "charges", "", "", "", usd_cell(statement.charges_micros, exact=True)])
    return csv_text(rows)


def _rows(statement: Statement, group: str) -> str:
    cells = []
    for line in statement.lines:
        if line.group != group:
            continue
        name = html.escape(line.name)
        label = statement.key_names.get(line.name, "") if group == "key" else ""
        if label:
            name = f"{html.escape(label)} <span class=id>{name}</span>"
        cells.append(
            f"<tr><td>{name}</td><td class=n>{line.requests:,}</td>"
            f"<td class=n>{line.prompt_tokens:,}</td><td class=n>{line.completion_tokens:,}</td>"
            f"<td class=n>{html.escape(format_usd(line.cost_micros))}</td></tr>"
        )
    return "\n".join(cells) or "<tr><td colspan=5>No usage</td></tr>"


def render_html(statement: Statement) -> str:
    s = statement
    head = (
        "<tr><th>{}</th><th>Requests</th><th>Input tokens</th>"
        "<th>Output tokens</th><th>Cost</th></tr>"
    )
    details: dict[str, Any] = {
        "Account": f"{html.escape(s.account_name)} ({s.account_id})",
        "Billing mode": s.mode,
        "Credit limit": html.escape(format_usd(s.credit_limit_micros)),
        "Charges this month": html.escape(format_usd(s.charges_micros)),
        "Top-ups this month": html.escape(format_usd(s.credits_micros)),
        "Balance at month end": html.escape(format_usd(s.closing_balance_micros)),
    }
    summary = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in details.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Statement {s.month}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;max-width:52rem;margin:2rem auto;color:#111}}
table{{border-collapse:collapse;width:100%;margin:1rem 0}}
th,td{{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left}}
.n{{text-align:right;font-variant-numeric:tabular-nums}} .id{{color:#666;font:12px monospace}}
@media print{{body{{margin:0}}}}
</style></head><body>
<h1>Statement for {s.month}</h1>
<table>{summary}</table>
<h2>By model</h2><table>{head.format("Model")}
{_rows(s, "model")}</table>
<h2>By key</h2><table>{head.format("Key")}
{_rows(s, "key")}</table>
<p>Generated {s.generated_at} by relay. Amounts in USD.</p>
</body></html>
"""
