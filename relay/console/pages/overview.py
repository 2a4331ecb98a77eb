"""An account's overview: its wallet, how to call relay, spend per day and by model and by
key over a chosen period (30 days by default), and recent errors."""

from __future__ import annotations

import datetime as dt
import time

import msgspec
from starlette.responses import Response

from relay.console.charts import bar_list_chart, daily_spend_chart
from relay.console.log_queries import DAY_MS, recent_errors, spend_by_key
from relay.console.snippets import ENV_VAR, base_url, pick_model, snippets
from relay.console.web import Ctx, page
from relay.identity.roles import Permission

__all__ = ["Period", "overview", "period_of"]

CHART_DAYS = 30
MAX_DAYS = 366
PRESETS = (7, 30, 90)


class Period(msgspec.Struct, frozen=True):
    first_day: int
    last_day: int
    error: str = ""

    @property
    def days(self) -> int:
        return self.last_day - self.first_day + 1

    @property
    def since(self) -> str:
        return _iso(self.first_day)

    @property
    def until(self) -> str:
        return _iso(self.last_day)


def _iso(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def _day(text: str) -> int:
    return (dt.date.fromisoformat(text) - dt.date(1970, 1, 1)).days


def period_of(query: dict[str, str], today: int) -> Period:
    """``?days=7`` or ``?since=…&until=…`` (UTC days); a bad one falls back with a message."""
    default = Period(today - CHART_DAYS + 1, today)
    days_text = query.get("days", "")
    if days_text:
        if days_text.isdigit() and 1 <= int(days_text) <= MAX_DAYS:
            return Period(today - int(days_text) + 1, today)
        return msgspec.structs.replace(default, error="Pick between 1 and 366 days.")
    since, until = query.get("since", "").strip(), query.get("until", "").strip()
    if not since and not until:
        return default
    try:
        last = min(_day(until), today) if until else today
        first = _day(since) if since else last - CHART_DAYS + 1
    except ValueError:
        return msgspec.structs.replace(default, error="Dates must look like 2026-11-30.")
    if first > last:
        return msgspec.structs.replace(default, error="“From” must be on or before “To”.")
    if last - first + 1 > MAX_DAYS:
        return msgspec.structs.replace(default, error="Pick a period of at most 366 days.")
    return Period(first, last)


@page("account", Permission.VIEW)
async def overview(ctx: Ctx) -> Response:
    assert ctx.account is not None
    services, account_id = ctx.services, ctx.account.id
    db = services.reader
    now_ms = int(time.time() * 1000)
    today = now_ms // DAY_MS
    period = period_of(dict(ctx.request.query_params), today)
    span = {"first_day": period.first_day, "last_day": period.last_day}
    days = await services.charts.per_day(account_id, **span)
    models = await services.charts.by_model(account_id, **span)
    keys = {key.id: key for key in ctx.state.store.keys_of(account_id)}
    by_key = [
        (keys[key_id].label if key_id in keys else (key_id or "operator token"), cost, count)
        for key_id, cost, count in await spend_by_key(db, account_id, **span)
    ]
    active = [k for k in keys.values() if k.status == "active" and not k.expired(now_ms)]
    newest = max(active, key=lambda k: k.created_at_ms, default=None)
    url = base_url(ctx.state.config, ctx.request)
    what = f"last {period.days} days" if period.last_day == today else "the chosen period"
    return ctx.render(
        "overview.html",
        wallet=await services.money.balance(account_id),
        budget=await services.money.budget(account_id),
        open_holds=await services.money.open_holds(account_id),
        period=period,
        presets=PRESETS,
        today=today,
        period_label=what,
        spend_total=sum(cost for _, cost, _ in days),
        requests_total=sum(requests for _, _, requests in days),
        days=days,
        daily_chart=daily_spend_chart(days, label=f"Spend per day, {what}", today=today),
        model_chart=bar_list_chart(models, label=f"Spend by model, {what}"),
        key_chart=bar_list_chart(by_key, label=f"Spend by key, {what}"),
        models=models,
        by_key=by_key,
        errors=await recent_errors(db, account_id),
        keys=keys,
        active_keys=len(active),
        base_url=url,
        snippet_key=newest,
        env_var=ENV_VAR,
        snippets=snippets(url, pick_model(ctx.state.router.models, newest)),
    )
