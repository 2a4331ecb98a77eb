"""Members of an account: the owner invites people (a one-time link), sets roles, removes.

An account always keeps at least one owner, so nobody can lock the team out of billing
and membership by mistake.
"""

from __future__ import annotations

from starlette.responses import Response

from relay.console.web import ConsoleError, Ctx, page
from relay.identity.roles import ROLE_CHOICES, Permission, Role
from relay.identity.users import Membership
from relay.mail.smtp import MailError, send_mail

__all__ = ["change_role", "invite_member", "members_page", "remove_member", "revoke_invite"]


def _role(text: str) -> Role:
    if text not in ROLE_CHOICES:
        raise ConsoleError(400, f"role must be one of {', '.join(ROLE_CHOICES)}")
    return Role(text)


async def _members(ctx: Ctx) -> list[Membership]:
    assert ctx.account is not None
    return await ctx.services.users.members(ctx.account.id)


async def _member(ctx: Ctx) -> tuple[Membership, list[Membership]]:
    members = await _members(ctx)
    user_id = ctx.request.path_params["user_id"]
    for member in members:
        if member.user_id == user_id:
            return member, members
    raise ConsoleError(404, "That person is not a member of this account.")


def _keeps_an_owner(members: list[Membership], changed: str, new_role: Role | None) -> bool:
    owners = {m.user_id for m in members if m.role is Role.OWNER}
    if new_role is Role.OWNER:
        owners.add(changed)
    else:
        owners.discard(changed)
    return bool(owners)


async def _render(ctx: Ctx, *, status: int = 200) -> Response:
    assert ctx.account is not None
    return ctx.render(
        "members.html",
        status=status,
        members=await _members(ctx),
        invites=await ctx.services.invites.pending(ctx.account.id),
        roles=ROLE_CHOICES,
        invite_url=ctx.flash.get("invite_url", ""),
        mailed_to=ctx.flash.get("mailed_to", ""),
        can_mail=ctx.state.config.email is not None,
    )


async def _mail_invite(ctx: Ctx, address: str, url: str) -> str:
    """Send the invite link by email when [email] is set; the address it went to, or ''."""
    email = ctx.state.config.email
    if email is None or not address:
        return ""
    if "@" not in address or len(address) > 254 or "\n" in address:
        raise ConsoleError(400, "That is not an email address.")
    assert ctx.account is not None and ctx.user is not None
    text = (
        f"{ctx.user.email} invites you to the account {ctx.account.name} on relay.\n\n"
        f"Accept here (the link works once, for 7 days):\n{url}\n"
    )
    try:
        await send_mail(email, [address], f"Invitation to {ctx.account.name} on relay", text)
    except MailError as exc:
        raise ConsoleError(502, f"The invite was created but the mail failed: {exc}") from None
    return address


@page("account", Permission.MANAGE_MEMBERS)
async def members_page(ctx: Ctx) -> Response:
    return await _render(ctx)


@page("account", Permission.MANAGE_MEMBERS)
async def invite_member(ctx: Ctx) -> Response:
    assert ctx.account is not None and ctx.user is not None
    role = _role(ctx.form.get("role", ""))
    origin = ctx.public_origin()  # first: a link relay cannot address is never created
    token = await ctx.services.invites.create(ctx.account.id, role, by=ctx.user)
    url = origin + f"/console/invite/{token}"
    mailed_to = await _mail_invite(ctx, ctx.form.get("email", "").strip(), url)
    # Shown once on the next page (from the server-side flash), never in a URL.
    flash = {
        "invite_url": url,
        "mailed_to": mailed_to,
        "notice": f"Invite link for a new {role.value} created.",
    }
    lost = (
        "Its link could not be shown (the console's store did not answer): revoke the new"
        " invite on the Members page and create another."
    )
    return await ctx.redirect_flash(ctx.account_url("members"), flash, if_lost=lost)


@page("account", Permission.MANAGE_MEMBERS)
async def revoke_invite(ctx: Ctx) -> Response:
    assert ctx.account is not None
    ref = ctx.form.get("invite", "")
    if not await ctx.services.invites.revoke(ctx.account.id, ref, actor=ctx.actor):
        raise ConsoleError(404, "That invite was already used, revoked or has expired.")
    notice = "Invite revoked: its link no longer works."
    return await ctx.redirect_flash(ctx.account_url("members"), {"notice": notice})


@page("account", Permission.MANAGE_MEMBERS)
async def change_role(ctx: Ctx) -> Response:
    assert ctx.account is not None
    member, members = await _member(ctx)
    role = _role(ctx.form.get("role", ""))
    if not _keeps_an_owner(members, member.user_id, role):
        raise ConsoleError(400, "The account must keep at least one owner.")
    await ctx.services.users.set_membership(ctx.account.id, member.user_id, role, actor=ctx.actor)
    return ctx.redirect(ctx.account_url("members"), notice="role-changed")


@page("account", Permission.MANAGE_MEMBERS)
async def remove_member(ctx: Ctx) -> Response:
    assert ctx.account is not None
    member, members = await _member(ctx)
    if not _keeps_an_owner(members, member.user_id, None):
        raise ConsoleError(400, "The account must keep at least one owner.")
    await ctx.services.users.remove_membership(ctx.account.id, member.user_id, actor=ctx.actor)
    return ctx.redirect(ctx.account_url("members"), notice="member-removed")
