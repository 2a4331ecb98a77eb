"""Request logs: filter by key, model, status and dates with totals for the filter; page
back by id; one request in full; export as CSV.

Rows are metadata only (docs/architecture.md §5): no prompt or response content exists to show. A
filter that cannot be read (a mangled date in a bookmarked URL) comes back on the same
page with its message, never as a dead-end error page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from relay.console.log_queries import LogFilter, log_entry, log_page, log_rows, log_totals
from relay.console.templating import format_time
from relay.console.web import ConsoleError, Ctx, page
from relay.csv_cells import csv_text
from relay.errors import RelayError
from relay.identity.roles import Permission
from relay.money.display import usd_cell

__all__ = ["export_logs", "log_entry_page", "logs_page"]

PAGE_ROWS = 50
_CSV_COLUMNS = (
    "time_utc", "request_id", "key_id", "key_name", "endpoint", "model", "provider", "status",
    "error_code", "stream", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cost_usd", "usage_estimated", "latency_ms", "ttfb_ms",
)  # fmt: skip


def _filter(ctx: Ctx) -> LogFilter:
    assert ctx.account is not None
    flt = LogFilter.from_query(ctx.request.query_params)
    key = ctx.state.store.keys.get(flt.key_id) if flt.key_id else None
    if flt.key_id and (key is None or key.account_id != ctx.account.id):
        raise ConsoleError(404, "There is no such key in this account.")
    return flt


def _before_id(ctx: Ctx) -> int | None:
    text = ctx.request.query_params.get("before", "")
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise ConsoleError(400, "before must be a row id")
    return min(int(text), 2**62)  # SQLite integers are 64-bit


@page("account", Permission.VIEW)
async def logs_page(ctx: Ctx) -> Response:
    assert ctx.account is not None
    keys = sorted(ctx.state.store.keys_of(ctx.account.id), key=lambda k: k.label.lower())
    error, status = "", 200
    try:
        flt = _filter(ctx)
        before = _before_id(ctx)
    except (RelayError, ConsoleError) as exc:
        # The page stays usable: the message beside the filters, the unfiltered rows below.
        error, status = exc.message, exc.status
        flt, before = LogFilter(), None
    db = ctx.services.reader
    rows, next_before = await log_page(db, ctx.account.id, flt, before_id=before, limit=PAGE_ROWS)
    query = flt.query()
    return ctx.render(
        "logs.html",
        status=status,
        error=error,
        rows=rows,
        totals=await log_totals(db, ctx.account.id, flt),
        flt=flt,
        keys=keys,
        key_labels={key.id: key.label for key in keys},
        models=sorted(ctx.state.router.models),
        next_url=ctx.account_url("logs", **query, before=str(next_before)) if next_before else "",
        first_url=ctx.account_url("logs", **query) if before else "",
        csv_url=ctx.account_url("logs.csv", **query),
    )


@page("account", Permission.VIEW)
async def log_entry_page(ctx: Ctx) -> Response:
    assert ctx.account is not None
    request_id = ctx.request.path_params["request_id"]
    row = await log_entry(ctx.services.reader, ctx.account.id, request_id)
    if row is None:
        raise ConsoleError(404, "There is no such request in this account.")
    key = ctx.state.store.keys.get(row["key_id"] or "")
    return ctx.render("log_entry.html", row=row, key=key)


def _csv_line(values: list[object]) -> str:
    return csv_text([values])


@page("account", Permission.VIEW)
async def export_logs(ctx: Ctx) -> Response:
    """Every row of the filter as CSV, streamed in batches (never all in memory)."""
    assert ctx.account is not None
    flt = _filter(ctx)
    db, account_id = ctx.services.reader, ctx.account.id
    names = {key.id: key.label for key in ctx.state.store.keys_of(account_id)}

    async def lines() -> AsyncIterator[str]:
        yield _csv_line(list(_CSV_COLUMNS))
        async for batch in log_rows(db, account_id, flt):
            yield "".join(
                _csv_line(
                    [
                        format_time(row["ts_ms"]),
                        row["request_id"],
                        row["key_id"],
                        names.get(row["key_id"], ""),
                        row["endpoint"],
                        row["model"],
                        row["provider"],
                        row["status"],
                        row["error_code"],
                        int(row["stream"]),
                        row["prompt_tokens"],
                        row["completion_tokens"],
                        row["cached_tokens"],
                        usd_cell(row["cost_micros"], exact=True),
                        int(row["usage_estimated"]),
                        row["latency_ms"],
                        row["ttfb_ms"],
                    ]
                )  # fmt: skip
                for row in batch
            )

    filename = f"relay-logs-{account_id}.csv"
    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )
