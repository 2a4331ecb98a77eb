"""Who may do what in the console: account roles, site operators, and their permissions.

A console user belongs to accounts through memberships, each with one role. Operators
run the site: they act with an owner's powers on every account and also have the admin
API's powers (crediting, suspending, reading the audit trail) in the console. Every check
is made on the server, per account and per object; templates only hide what a role
cannot use.
"""

from __future__ import annotations

import enum

__all__ = ["ROLE_CHOICES", "Permission", "Role", "allows"]


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


ROLE_CHOICES = tuple(role.value for role in Role)


class Permission(enum.Enum):
    VIEW = "view"  # overview, keys list, logs, tickets (read)
    MANAGE_OWN_KEYS = "manage_own_keys"  # create keys, edit and revoke the ones you created
    MANAGE_ALL_KEYS = "manage_all_keys"  # edit limits and revoke any key of the account
    WRITE_TICKETS = "write_tickets"  # open tickets and reply
    VIEW_BILLING = "view_billing"  # ledger, top-ups, statements
    MANAGE_MEMBERS = "manage_members"  # invite, change roles, remove members
    PAY = "pay"  # card top-ups, auto top-up settings, dismissing billing notices
    MANAGE_ACCOUNT = "manage_account"  # export the account's data, delete the account


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.ADMIN: frozenset(
        {
            Permission.VIEW,
            Permission.MANAGE_OWN_KEYS,
            Permission.MANAGE_ALL_KEYS,
            Permission.WRITE_TICKETS,
        }
    ),
    Role.MEMBER: frozenset({Permission.VIEW, Permission.MANAGE_OWN_KEYS, Permission.WRITE_TICKETS}),
    Role.VIEWER: frozenset({Permission.VIEW}),
}


def allows(role: Role | None, permission: Permission) -> bool:
    """True if ``role`` grants ``permission``; no role (no membership) grants nothing."""
    return role is not None and permission in _GRANTS[role]
