"""API keys of an account: list, create (the secret is shown once), edit limits, revoke.

Changes go through ``AccountStore`` like the admin API's, so each is committed with its
audit row (actor: the user's email) and binds the very next request. Owners and admins
manage every key of the account; members only the keys they created, and may only
tighten those keys' limits (``relay.console.key_limits``); viewers none.

Every change answers with a redirect (POST-redirect-GET), so a reload never creates a
second key; the new secret waits in the console's one-time server-side flash and is
shown on the next page only. A form with mistakes comes back with everything typed and
ticked, each message beside its field.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from starlette.responses import Response

from relay.cluster.pg_identity import ClusterAccountStore
from relay.console.forms import FieldErrors, checked, parse_count, parse_future_day, parse_usd
from relay.console.key_limits import loosened_limits
from relay.console.snippets import base_url, pick_model, snippets
from relay.console.web import ConsoleError, Ctx, page
from relay.identity.accounts import ENDPOINT_KINDS, ApiKey
from relay.identity.roles import Permission
from relay.money.budget import BUDGET_PERIODS, BudgetPeriod
from relay.money.pricing import micros_to_usd

__all__ = ["create_key", "edit_key", "key_page", "keys_page", "revoke_key"]


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


def _label(text: str) -> str:
    label = " ".join(text.split())
    if not 1 <= len(label) <= 100:
        raise ValueError("Name: give the key a name of 1 to 100 characters.")
    return label


def _key_from_form(ctx: Ctx, base: ApiKey) -> tuple[ApiKey, FieldErrors]:
    """The key the form describes, and every mistake in it (in the form's order)."""
    form, errors = ctx.form, FieldErrors()
    today = dt.datetime.now(dt.UTC).date()
    label = checked(errors, "name", lambda: _label(form.get("name", "")), base.label)
    cap = checked(
        errors, "spend_cap_usd", lambda: parse_usd(form.get("spend_cap_usd", ""), "Spend cap"), 0
    )
    counts: dict[str, int] = {}
    for name, label_text, default, minimum in (
        ("rpm", "Requests per minute", 0, 0),
        ("tpm", "Tokens per minute", 0, 0),
        ("concurrency", "Requests at once", 100, 1),
    ):
        try:
            counts[name] = parse_count(
                form.get(name, ""), label_text, default=default, minimum=minimum
            )
        except ValueError as exc:
            errors.add(name, str(exc))
            counts[name] = default
    expires_text = form.get("expires", "").strip()
    expires: int | None
    if base.expires_at_ms is not None and expires_text == _form_of(base)["expires"]:
        expires = base.expires_at_ms  # unchanged: saving other edits of an expired key is fine
    else:
        expires = checked(
            errors,
            "expires",
            lambda: parse_future_day(expires_text, "Expires", today=today),
            None,
        )
    period = checked(
        errors, "budget_period", lambda: _budget_period(form.get("budget_period", "")), None
    )
    models = tuple(ctx.form_values("models"))
    unknown = [m for m in models if m not in ctx.state.router.models]
    if unknown:
        errors.add("models", f"Models: {', '.join(unknown)} is not offered here.")
    kinds = tuple(ctx.form_values("endpoints"))
    if any(kind not in ENDPOINT_KINDS for kind in kinds):
        errors.add("endpoints", "Endpoints: pick from the listed kinds.")
    key = msgspec.structs.replace(
        base,
        label=label,
        models=models,
        endpoints=kinds,
        spend_cap_micros=cap,
        expires_at_ms=expires,
        budget_period=period,
        **counts,
    )
    return key, errors


def _budget_period(value: str) -> BudgetPeriod | None:
    for period in BUDGET_PERIODS:
        if value == period:
            return period
    if value:
        raise ValueError("Cap resets: every day, week or month, or never.")
    return None


def _form_of(key: ApiKey) -> dict[str, Any]:
    """What the edit form shows for a stored key."""
    expires = ""
    if key.expires_at_ms is not None:
        moment = dt.datetime.fromtimestamp(key.expires_at_ms / 1000, tz=dt.UTC)
        expires = moment.date().isoformat()
    return {
        "name": key.label,
        "spend_cap_usd": micros_to_usd(key.spend_cap_micros) if key.spend_cap_micros else "",
        "rpm": str(key.rpm),
        "tpm": str(key.tpm),
        "concurrency": str(key.concurrency),
        "expires": expires,
        "budget_period": key.budget_period or "",
        "models": list(key.models),
        "endpoints": list(key.endpoints),
    }


def _typed(ctx: Ctx) -> dict[str, Any]:
    """What the person typed and ticked, to show again after an error."""
    values: dict[str, Any] = dict(ctx.form)
    values["models"] = ctx.form_values("models")
    values["endpoints"] = ctx.form_values("endpoints")
    return values


def _field_context(ctx: Ctx) -> dict[str, Any]:
    models = ctx.state.router.models
    return {
        "models": sorted(models),
        "unavailable": {name for name, model in models.items() if not model.available},
        "endpoint_kinds": ENDPOINT_KINDS,
    }


async def _last_used(ctx: Ctx, account_id: str) -> dict[str, int]:
    rows = await ctx.services.reader.fetchall(
        "SELECT id, last_used_at_ms FROM api_keys WHERE account_id = ? "
        "AND last_used_at_ms IS NOT NULL",
        (account_id,),
    )
    found = {row["id"]: row["last_used_at_ms"] for row in rows}
    store = ctx.state.store
    for key in store.keys_of(account_id):
        if key.id in store.used_keys:  # not flushed yet
            found[key.id] = store.used_keys[key.id]
    return found


async def _new_key(ctx: Ctx, key_id: str) -> ApiKey | None:
    """The key just created, whose secret the flash carries."""
    store = ctx.state.store
    if key_id not in store.keys and isinstance(store, ClusterAccountStore):
        # Created through another instance a moment ago: the redirect may land here before
        # that instance's announcement does.
        await store.find_missing(None, key_id)
    return store.keys.get(key_id)


async def _render_list(
    ctx: Ctx, *, status: int = 200, errors: FieldErrors | None = None
) -> Response:
    assert ctx.account is not None
    account_id = ctx.account.id
    keys = sorted(ctx.state.store.keys_of(account_id), key=lambda k: k.created_at_ms, reverse=True)
    allowed = await _manageable(ctx)
    secret = ctx.flash.get("secret", "")
    new_key = await _new_key(ctx, ctx.flash.get("key_id", "")) if secret else None
    url = base_url(ctx.state.config, ctx.request)
    model = pick_model(ctx.state.router.models, new_key)
    return ctx.render(
        "keys.html",
        status=status,
        keys=keys,
        spend={key.id: await ctx.services.money.key_spend(key.id) for key in keys},
        manageable={k.id for k in keys if allowed is None or k.id in allowed},
        last_used=await _last_used(ctx, account_id),
        creators=await ctx.services.users.key_creators(account_id),
        now_ms=int(dt.datetime.now(dt.UTC).timestamp() * 1000),
        errors=errors or FieldErrors(),
        form=_typed(ctx) if errors else {},
        secret=secret,
        new_key=new_key,
        base_url=url,
        snippets=snippets(url, model, secret) if new_key is not None else [],
        **_field_context(ctx),
    )


@page("account", Permission.VIEW)
async def keys_page(ctx: Ctx) -> Response:
    return await _render_list(ctx)


@page("account", Permission.MANAGE_OWN_KEYS)
async def create_key(ctx: Ctx) -> Response:
    assert ctx.account is not None and ctx.user is not None
    blank = ApiKey(id="", account_id=ctx.account.id, label="", last4="")
    spec, errors = _key_from_form(ctx, blank)
    if errors:
        return await _render_list(ctx, status=400, errors=errors)
    key, secret = await ctx.state.store.create_key(spec, actor=ctx.actor)
    await ctx.services.users.note_key_creator(key.id, ctx.user.id)
    # The secret waits server-side for the next page only: never in a URL, never twice.
    flash = {"secret": secret, "key_id": key.id, "notice": f"Key “{key.label}” created."}
    lost = (
        "Its secret could not be shown (the console's store did not answer) and is kept"
        " nowhere: revoke this key on the Keys page and create another."
    )
    return await ctx.redirect_flash(ctx.account_url("keys"), flash, if_lost=lost)


async def _render_key(
    ctx: Ctx, key: ApiKey, *, status: int = 200, errors: FieldErrors | None = None
) -> Response:
    allowed = await _manageable(ctx)
    url = base_url(ctx.state.config, ctx.request)
    creators = await ctx.services.users.key_creators(key.account_id)
    return ctx.render(
        "key.html",
        status=status,
        key=key,
        spend=await ctx.services.money.key_spend(key.id),
        last_used=await ctx.state.store.last_used(key.id),
        created_by=creators.get(key.id, "admin API"),
        can_manage=key.status != "revoked" and (allowed is None or key.id in allowed),
        errors=errors or FieldErrors(),
        form=_typed(ctx) if errors else _form_of(key),
        base_url=url,
        snippets=snippets(url, pick_model(ctx.state.router.models, key)),
        now_ms=int(dt.datetime.now(dt.UTC).timestamp() * 1000),
        **_field_context(ctx),
    )


@page("account", Permission.VIEW)
async def key_page(ctx: Ctx) -> Response:
    return await _render_key(ctx, _key_of_account(ctx, ctx.request.path_params["key_id"]))


@page("account", Permission.MANAGE_OWN_KEYS)
async def edit_key(ctx: Ctx) -> Response:
    key = _key_of_account(ctx, ctx.request.path_params["key_id"])
    await _require_manageable(ctx, key)
    if key.status == "revoked":
        raise ConsoleError(400, "A revoked key cannot be changed.")
    changed, errors = _key_from_form(ctx, key)
    if errors:
        return await _render_key(ctx, key, status=400, errors=errors)
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
