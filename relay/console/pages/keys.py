"""API keys of an account: list, create (the secret is shown once), edit limits, revoke.

Changes go through ``AccountStore`` like the admin API's, so each is committed with its
audit row (actor: the user's email) and binds the very next request. Owners and admins
manage every key of the account; members only the keys they created, and may only
tighten those keys' limits (``relay.console.key_limits``); viewers none.
"""

from __future__ import annotations

import datetime as dt

import msgspec
from starlette.responses import Response

from relay.console.key_limits import loosened_limits
from relay.console.web import ConsoleError, Ctx, page
from relay.errors import InvalidRequest, RelayError
from relay.identity.accounts import ENDPOINT_KINDS, ApiKey
from relay.identity.roles import Permission
from relay.money.budget import BUDGET_PERIODS, BudgetPeriod
from relay.money.pricing import micros_to_usd, usd_to_micros

__all__ = ["create_key", "edit_key", "key_page", "keys_page", "revoke_key"]

_MAX_LIMIT = 10**9


def _key_of_account(ctx: Ctx, key_id: str) -> ApiKey:
    """The account's key; another account's key is "not found" (never "forbidden")."""
    assert ctx.account is not None
    key = ctx.state.store.keys.get(key_id)
    if key is None or key.account_id != ctx.account.id:
        raise ConsoleError(404, "There is no such key in this account.")
    return key


async def _manageable(ctx: Ctx) -> set[str] | None:
    """Ids of keys the user may change; None means all of the account's keys."""
    if ctx.can(Permission.MANAGE_ALL_KEYS):
        return None
    if not ctx.can(Permission.MANAGE_OWN_KEYS):
        return set()
    assert ctx.user is not None
    return await ctx.services.users.keys_created_by(ctx.user.id)


async def _require_manageable(ctx: Ctx, key: ApiKey) -> None:
    allowed = await _manageable(ctx)
    if allowed is not None and key.id not in allowed:
        raise ConsoleError(403, "You may change only the keys you created.")


def _count(ctx: Ctx, name: str, default: int, *, minimum: int = 0) -> int:
    text = ctx.form.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not minimum <= int(text) <= _MAX_LIMIT:
        raise InvalidRequest(f"{name} must be a whole number of at least {minimum}", param=name)
    return int(text)


def _usd(ctx: Ctx, name: str) -> int:
    text = ctx.form.get(name, "").strip() or "0"
    try:
        micros = usd_to_micros(text)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}", param=name) from None
    if micros < 0:
        raise InvalidRequest(f"{name} must not be negative", param=name)
    return micros


def _expiry(ctx: Ctx, current_ms: int | None) -> int | None:
    text = ctx.form.get("expires", "").strip()
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest("expires must be a date (YYYY-MM-DD)", param="expires") from None
    if (
        current_ms is not None
        and dt.datetime.fromtimestamp(current_ms / 1000, dt.UTC).date() == day
    ):
        return current_ms  # the form shows only the day: an unchanged day keeps the exact time
    return int(dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC).timestamp() * 1000)


def _scopes(ctx: Ctx) -> tuple[tuple[str, ...], tuple[str, ...]]:
    models = tuple(ctx.form_values("models"))
    unknown = [m for m in models if m not in ctx.state.router.models]
    if unknown:
        raise InvalidRequest(f"unknown models: {', '.join(unknown)}", param="models")
    kinds = tuple(ctx.form_values("endpoints"))
    if any(kind not in ENDPOINT_KINDS for kind in kinds):
        raise InvalidRequest("unknown endpoint kind", param="endpoints")
    return models, kinds


def _label(ctx: Ctx) -> str:
    label = " ".join(ctx.form.get("name", "").split())
    if not 1 <= len(label) <= 100:
        raise InvalidRequest("the key needs a name of 1 to 100 characters", param="name")
    return label


def _key_from_form(ctx: Ctx, base: ApiKey) -> ApiKey:
    models, kinds = _scopes(ctx)
    return msgspec.structs.replace(
        base,
        label=_label(ctx),
        models=models,
        endpoints=kinds,
        spend_cap_micros=_usd(ctx, "spend_cap_usd"),
        rpm=_count(ctx, "rpm", 0),
        tpm=_count(ctx, "tpm", 0),
        concurrency=_count(ctx, "concurrency", 100, minimum=1),
        expires_at_ms=_expiry(ctx, base.expires_at_ms),
        budget_period=_budget_period(ctx),
    )


def _budget_period(ctx: Ctx) -> BudgetPeriod | None:
    value = ctx.form.get("budget_period", "")
    for period in BUDGET_PERIODS:
        if value == period:
            return period
    if value:
        raise InvalidRequest(
            "the cap resets every day, week or month, or never", param="budget_period"
        )
    return None


async def _render_list(
    ctx: Ctx, *, status: int = 200, error: str = "", secret: str = "", new_key: ApiKey | None = None
) -> Response:
    assert ctx.account is not None
    keys = sorted(
        ctx.state.store.keys_of(ctx.account.id), key=lambda k: k.created_at_ms, reverse=True
    )
    allowed = await _manageable(ctx)
    return ctx.render(
        "keys.html",
        status=status,
        keys=keys,
        spend={key.id: ctx.state.wallet.key_snapshot(key.id) for key in keys},
        manageable={k.id for k in keys if allowed is None or k.id in allowed},
        models=sorted(ctx.state.router.models),
        endpoint_kinds=ENDPOINT_KINDS,
        error=error,
        secret=secret,
        new_key=new_key,
        form=ctx.form,
    )


@page("account", Permission.VIEW)
async def keys_page(ctx: Ctx) -> Response:
    return await _render_list(ctx)


@page("account", Permission.MANAGE_OWN_KEYS)
async def create_key(ctx: Ctx) -> Response:
    assert ctx.account is not None and ctx.user is not None
    blank = ApiKey(id="", account_id=ctx.account.id, label="", last4="")
    try:
        spec = _key_from_form(ctx, blank)
    except RelayError as exc:
        return await _render_list(ctx, status=400, error=exc.message)
    key, secret = await ctx.state.store.create_key(spec, actor=ctx.actor)
    await ctx.services.users.note_key_creator(key.id, ctx.user.id)
    # Rendered, not redirected: the secret must never travel in a URL or be re-shown.
    ctx.form = {}
    return await _render_list(ctx, status=201, secret=secret, new_key=key)


@page("account", Permission.VIEW)
async def key_page(ctx: Ctx) -> Response:
    key = _key_of_account(ctx, ctx.request.path_params["key_id"])
    allowed = await _manageable(ctx)
    return ctx.render(
        "key.html",
        key=key,
        spend=ctx.state.wallet.key_snapshot(key.id),
        last_used=await ctx.state.store.last_used(key.id),
        can_manage=key.status != "revoked" and (allowed is None or key.id in allowed),
        models=sorted(ctx.state.router.models),
        endpoint_kinds=ENDPOINT_KINDS,
        spend_cap_usd=micros_to_usd(key.spend_cap_micros) if key.spend_cap_micros else "",
        error="",
    )


@page("account", Permission.MANAGE_OWN_KEYS)
async def edit_key(ctx: Ctx) -> Response:
    key = _key_of_account(ctx, ctx.request.path_params["key_id"])
    await _require_manageable(ctx, key)
    if key.status == "revoked":
        raise ConsoleError(400, "A revoked key cannot be changed.")
    try:
        changed = _key_from_form(ctx, key)
    except RelayError as exc:
        raise ConsoleError(400, exc.message) from None
    if not ctx.can(Permission.MANAGE_ALL_KEYS):
        loosened = loosened_limits(key, changed)
        if loosened:
            raise ConsoleError(
                403,
                f"Members may only tighten a key's limits; ask an owner or admin to lift "
                f"its {', '.join(loosened)}.",
            )
    state = ctx.state
    updated = await state.store.update_key(changed, actor=ctx.actor)
    state.gate.limiter.forget(updated.id)
    return ctx.redirect(ctx.account_url(f"keys/{key.id}"), notice="key-updated")


@page("account", Permission.MANAGE_OWN_KEYS)
async def revoke_key(ctx: Ctx) -> Response:
    key = _key_of_account(ctx, ctx.request.path_params["key_id"])
    await _require_manageable(ctx, key)
    state = ctx.state
    if key.status != "revoked":
        revoked = msgspec.structs.replace(key, status="revoked")
        await state.store.update_key(revoked, actor=ctx.actor, action="key.revoke")
        state.auth.forget_key(key.id)
        state.gate.limiter.forget(key.id)
    return ctx.redirect(ctx.account_url("keys"), notice="key-revoked")
