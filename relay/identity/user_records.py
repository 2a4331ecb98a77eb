"""Where console users live: the seam between the console and admin routes and an engine.

The console's pages and ``/admin/users`` call a ``UserRecords``; they never name an engine.
``relay.identity.users.UserStore`` is the embedded one (SQLite, one writer transaction per
change with its audit row); ``relay.cluster.pg_users.PgUserStore`` the cluster one (one
PostgreSQL transaction per change, its audit row appended to PostgreSQL's chain inside it).
"""

from __future__ import annotations

from typing import Protocol

from relay.identity.roles import Role
from relay.identity.users import Membership, User

__all__ = ["UserRecords"]


class UserRecords(Protocol):
    async def create_user(
        self,
        email: str,
        display_name: str,
        password: str,
        *,
        operator: bool,
        actor: str,
        membership: tuple[str, Role] | None = None,
    ) -> User: ...

    async def get(self, user_id: str) -> User | None: ...

    async def all_users(self) -> list[User]: ...

    async def by_email(self, email: str) -> User | None: ...

    async def authenticate(self, email: str, password: str) -> User | None: ...

    async def change_password(self, user: User, new_password: str, *, actor: str) -> User: ...

    async def memberships(self, user_id: str) -> list[Membership]: ...

    async def role_in(self, user_id: str, account_id: str) -> Role | None: ...

    async def members(self, account_id: str) -> list[Membership]: ...

    async def set_membership(
        self, account_id: str, user_id: str, role: Role, *, actor: str
    ) -> None: ...

    async def remove_membership(self, account_id: str, user_id: str, *, actor: str) -> None: ...

    async def note_key_creator(self, key_id: str, user_id: str) -> None: ...

    async def keys_created_by(self, user_id: str) -> set[str]: ...

    async def key_creators(self, account_id: str) -> dict[str, str]: ...
