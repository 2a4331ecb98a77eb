"""Admin handlers for console users: ``POST /admin/users`` and ``GET /admin/users``.

This is how the first operator comes to exist (``relay user create EMAIL --operator``):
the CLI is a client of this API, so the running server stays the only writer.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relay.admin.common import ADMIN_ACTOR, admin_route, created, decode_body, iso
from relay.cluster.pg_users import PgUserStore
from relay.errors import InvalidRequest, RelayError
from relay.http.responses import json_response
from relay.identity.roles import ROLE_CHOICES, Role
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.identity.user_records import UserRecords
from relay.identity.users import User, UserStore
from relay.state import RelayState

__all__ = ["user_routes"]


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, Meta(min_length=3, max_length=254)]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]
    display_name: Annotated[str, Meta(max_length=100)] = ""
    operator: bool = False
    account: str | None = None
    role: str | None = None


def user_routes() -> list[BaseRoute]:
    return [
        Route("/admin/users", create_user, methods=["POST"]),
        Route("/admin/users", list_users, methods=["GET"]),
    ]


def _users(state: RelayState) -> UserRecords:
    path = secret_path_for(state.config.database_path)
    if not path.exists():  # load_or_create would mint a fresh (wrong) audit key
        raise RelayError(f"The server secret file {path.name} is missing")
    audit_key = ServerSecret.load_or_create(path).subkey("audit")
    if state.cluster is None:
        return UserStore(state.db, audit_key, state.store.hasher)
    return PgUserStore(state.cluster.pool, audit_key, state.store.hasher)


async def _user_view(users: UserRecords, state: RelayState, user: User) -> dict[str, Any]:
    memberships = await users.memberships(user.id)
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "operator": user.operator,
        "status": user.status,
        "created_at": iso(user.created_at_ms),
        "memberships": [
            {
                "account_id": m.account_id,
                "account": state.store.accounts[m.account_id].name
                if m.account_id in state.store.accounts
                else None,
                "role": m.role.value,
            }
            for m in memberships
        ],
    }


def _membership(state: RelayState, spec: NewUser) -> tuple[str, Role] | None:
    if spec.account is None:
        if spec.role is not None:
            raise InvalidRequest("role needs an account", param="role")
        return None
    if spec.role not in ROLE_CHOICES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLE_CHOICES)}", param="role")
    return state.store.account(spec.account).id, Role(spec.role)


@admin_route
async def create_user(request: Request, state: RelayState) -> Response:
    spec = await decode_body(request, NewUser)
    if spec.account is None and not spec.operator:
        raise InvalidRequest("a user needs an account and role, or operator: true")
    users = _users(state)
    user = await users.create_user(
        spec.email,
        spec.display_name or spec.email.split("@")[0],
        spec.password,
        operator=spec.operator,
        actor=ADMIN_ACTOR,
        membership=_membership(state, spec),
    )
    return created(await _user_view(users, state, user))


@admin_route
async def list_users(request: Request, state: RelayState) -> Response:
    users = _users(state)
    views = [await _user_view(users, state, user) for user in await users.all_users()]
    return json_response({"data": views})
