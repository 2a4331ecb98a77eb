"""The billing mail queue on PostgreSQL (``MailQueue`` of cluster mode).

The rows are the embedded ones (``billing_mail``): a receipt's row is queued by the credit's
own transaction (``PgPayments.credit``), a statement's by ``add_statements`` once the month
closed (``ON CONFLICT DO NOTHING`` on the unique key: once per account and month, however
many instances or rounds add it). Only the elected job runner sends (docs/scaling.md §7.1),
but leadership is a schedule, not a fence: a leader whose session died may still be
sending while the next one starts. So a row is **claimed** before its send, as the
embedded sender marks it after: one transaction moves ``next_attempt_at_ms`` past the
send's longest duration and counts the attempt (``FOR UPDATE SKIP LOCKED``: a second
sender takes the next row, never the same one), and the outcome is recorded only by the
claim's holder (``WHERE attempts = the claimed attempt``). A sender that dies mid-send
leaves its row claimed; once the claim lapses the next leader sends it. As embedded, SMTP
has no transactions: a death between the server's "250" and the outcome's commit sends
that one mail again (at least once, never zero times).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.config import Config
from relay.payments.mail_queue import DueMail

__all__ = ["PgMailQueue", "claim_ms_of"]

# A send is about eight SMTP exchanges (connect, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA,
# QUIT), each bounded by [email] timeout_s; the claim outlasts them all.
_EXCHANGES = 10


def claim_ms_of(config: Config) -> int:
    """How long a claimed row is left to its sender: longer than any send can take."""
    timeout_s = config.email.timeout_s if config.email is not None else 30.0
    return int(_EXCHANGES * timeout_s * 1000)


class PgMailQueue:
    def __init__(self, pool: Any, claim_ms: Callable[[], int]) -> None:
        self._pool = pool
        self._claim_ms = claim_ms  # read at each claim: a reload may change the timeout

    async def add_statements(self, month: str, end_ms: int, now_ms: int) -> int:
        status = await self._pool.execute(
            "INSERT INTO billing_mail (kind, account_id, ref, created_at_ms, "
            "next_attempt_at_ms) SELECT 'statement', id, $1, $2, $2 FROM accounts "
            "WHERE id NOT IN (SELECT account_id FROM deletion_requests) AND EXISTS "
            "(SELECT 1 FROM ledger WHERE ledger.account_id = accounts.id "
            "AND created_at_ms < $3) ON CONFLICT (kind, account_id, ref) DO NOTHING",
            month,
            now_ms,
            end_ms,
        )
        return int(str(status).rsplit(" ", 1)[-1])  # "INSERT 0 n"

    async def due(self, now_ms: int, limit: int) -> list[DueMail]:
        """One due row, claimed (a claim covers one send; the sender asks again)."""
        if limit < 1:
            return []
        row = await self._pool.fetchrow(
            "UPDATE billing_mail SET attempts = attempts + 1, next_attempt_at_ms = $2 "
            "WHERE id = (SELECT id FROM billing_mail WHERE status = 'pending' "
            "AND next_attempt_at_ms <= $1 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            "RETURNING id, kind, account_id, ref, attempts",
            now_ms,
            now_ms + self._claim_ms(),
        )
        if row is None:
            return []
        return [DueMail(row["id"], row["kind"], row["account_id"], row["ref"], row["attempts"])]

    async def record(
        self, mail: DueMail, outcome: str, error: str | None, *, now_ms: int, next_at_ms: int
    ) -> None:
        await self._pool.execute(
            "UPDATE billing_mail SET status = $1, last_error = $2, next_attempt_at_ms = $3, "
            "done_at_ms = $4 WHERE id = $5 AND attempts = $6 AND status = 'pending'",
            outcome,
            error,
            next_at_ms,
            None if outcome == "pending" else now_ms,
            mail.id,
            mail.attempt,
        )
