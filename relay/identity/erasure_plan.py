"""What erasing an account's personal data overwrites: the statements, for either engine.

Written once in SQLite's dialect and run by the embedded erasure job (``data_rights``,
in the single writer's transaction) and by the cluster's (``relay.cluster.pg_erasure``,
in one PostgreSQL transaction, placeholders rewritten). What is erased: the account's
name (replaced by its pseudonym), key labels, the buyer name on receipts, the saved card
link, and — where the console's tables exist — its members who belong to no other
account (e-mail, name, password, sessions), its invites, ticket subjects and message
bodies. What is kept: the ledger, usage and payment rows (money records; they carry only
the random account id), so the balance is still the sum of the ledger rows.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

__all__ = ["ERASED", "ONLY_HERE_USERS", "ErasureStep", "erasure_counts", "erasure_steps"]

ERASED = "[erased]"

# Users of this account only: anyone also in another account keeps their login.
ONLY_HERE_USERS = (
    "SELECT user_id FROM console_memberships WHERE account_id = ? AND user_id NOT IN "
    "(SELECT user_id FROM console_memberships WHERE account_id != ?)"
)


class ErasureStep(NamedTuple):
    """One statement; ``counted_as`` names the rows it changed in the audit detail."""

    counted_as: str | None
    sql: str
    params: tuple[Any, ...]


def erasure_steps(
    account_id: str, pseudonym: str, at_ms: int, *, only_here: list[str] | None
) -> list[ErasureStep]:
    """The statements, in order; ``only_here`` None: the console's tables do not exist."""
    steps = [
        ErasureStep(
            None,
            "UPDATE accounts SET name = ?, updated_at_ms = ? WHERE id = ?",
            (pseudonym, at_ms, account_id),
        ),
        ErasureStep(
            "key_labels", "UPDATE api_keys SET label = ? WHERE account_id = ?", (ERASED, account_id)
        ),
        ErasureStep(
            None,
            "UPDATE receipts SET buyer_name = ? WHERE account_id = ?",
            (pseudonym, account_id),
        ),
        ErasureStep(None, "DELETE FROM payment_customers WHERE account_id = ?", (account_id,)),
    ]
    if only_here is None:
        return steps
    for user_id in only_here:
        tag = hashlib.sha256(user_id.encode()).hexdigest()[:12]
        steps.append(
            ErasureStep(
                None,
                "UPDATE console_users SET email = ?, display_name = ?, password_hash = '!', "
                "status = 'disabled', session_version = session_version + 1, "
                "updated_at_ms = ? WHERE id = ?",
                (f"deleted-{tag}@invalid", "deleted user", at_ms, user_id),
            )
        )
        steps.append(
            ErasureStep(None, "DELETE FROM console_sessions WHERE user_id = ?", (user_id,))
        )
    steps += [
        ErasureStep(None, "DELETE FROM console_invites WHERE account_id = ?", (account_id,)),
        ErasureStep(
            "tickets",
            "UPDATE console_tickets SET subject = ? WHERE account_id = ?",
            (ERASED, account_id),
        ),
        ErasureStep(
            "ticket_messages",
            "UPDATE console_ticket_messages SET body = ? WHERE ticket_id IN "
            "(SELECT id FROM console_tickets WHERE account_id = ?)",
            (ERASED, account_id),
        ),
    ]
    return steps


def erasure_counts(changed: dict[str, int], only_here: list[str] | None) -> dict[str, int]:
    """The audit detail's counts, in the order the embedded job always wrote them."""
    counts = {"key_labels": changed["key_labels"]}
    if only_here is not None:
        counts |= {
            "users": len(only_here),
            "tickets": changed["tickets"],
            "ticket_messages": changed["ticket_messages"],
        }
    return counts
