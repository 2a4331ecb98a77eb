"""An account's overview: its wallet, 30 days of spend (per day, by model), recent errors."""

from __future__ import annotations

import time

from starlette.responses import Response

from relay.console.auth.roles import Permission
from relay.console.charts import daily_spend_chart, model_spend_chart
from relay.console.log_queries import daily_spend, recent_errors, spend_by_model
from relay.console.snippets import ENV_VAR, base_url, pick_model, snippets
from relay.console.web import Ctx, page

__all__ = ["overview"]

CHART_DAYS = 30


@page("account", Permission.VIEW)
async def overview(ctx: Ctx) -> Response:
    assert ctx.account is not None
    db, account_id = ctx.state.db, ctx.account.id
    now_ms = int(time.time() * 1000)
    days = await daily_spend(db, account_id, now_ms=now_ms, days=CHART_DAYS)
    models = await spend_by_model(db, account_id, now_ms=now_ms, days=CHART_DAYS)
    keys = {key.id: key for key in ctx.state.store.keys_of(account_id)}
    active = [k for k in keys.values() if k.status == "active" and not k.expired(now_ms)]
    newest = max(active, key=lambda k: k.created_at_ms, default=None)
    url = base_url(ctx.state.config, ctx.request)
    return ctx.render(
        "overview.html",
        wallet=ctx.state.wallet.snapshot(account_id),
        open_holds=ctx.state.wallet.open_hold_count(account_id),
        spend_30d=sum(cost for _, cost, _ in days),
        requests_30d=sum(requests for _, _, requests in days),
        daily_chart=daily_spend_chart(days, label=f"Spend per day, last {CHART_DAYS} days"),
        model_chart=model_spend_chart(models, label=f"Spend by model, last {CHART_DAYS} days"),
        models=models,
        errors=await recent_errors(db, account_id),
        keys=keys,
        active_keys=len(active),
        base_url=url,
        snippet_key=newest,
        env_var=ENV_VAR,
        snippets=snippets(url, pick_model(ctx.state.router.models, newest)),
    )
