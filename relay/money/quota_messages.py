"""What the wallet says when a hold does not fit, and the note on a charge row.

The texts a client reads in a 402 (``QuotaError``) and an operator reads on a charge: they
name the limit that refused (balance, key or account budget, which period) and when it
resets, in dollars (``micros_to_usd``), never floats.
"""

from __future__ import annotations

from relay.money.budget import PERIOD_ADJECTIVES, BudgetPeriod, iso_utc
from relay.money.exposure import Capped
from relay.money.pricing import micros_to_usd

__all__ = ["balance_message", "cap_message", "charge_note", "limit_message"]


def charge_note(
    *, estimated: bool, overrun: bool, measured_micros: int, worst_case_micros: int
) -> str | None:
    parts = ["estimated"] if estimated else []
    if overrun:
        parts.append(
            f"overrun: measured {measured_micros} micros, "
            f"billed the worst case {worst_case_micros} micros"
        )
    return "; ".join(parts) or None


def balance_message(headroom_micros: int, worst_case_micros: int) -> str:
    return (
        f"insufficient balance: this request may cost up to "
        f"${micros_to_usd(worst_case_micros)} and ${micros_to_usd(max(0, headroom_micros))}"
        " is available after requests in flight; add credit or lower max_tokens"
    )


def cap_message(who: str, capped: Capped, headroom: int, worst_case_micros: int) -> str:
    """Names the budget (key or account, lifetime or which period) and when it resets."""
    window = capped.window
    if window is None:
        return limit_message(who, None, capped.cap, headroom, worst_case_micros)
    return limit_message(who, window.period, capped.cap, headroom, worst_case_micros, window.end_ms)


def limit_message(
    who: str,
    period: BudgetPeriod | None,
    cap_micros: int,
    headroom: int,
    worst_case_micros: int,
    resets_at_ms: int = 0,
) -> str:
    """``cap_message`` from plain figures, as PostgreSQL's ``relay_hold`` reports a refusal
    (relay.cluster.pg_holds): the same text on both engines. ``period`` None: a lifetime
    cap (a key's "spend cap", an account's "budget"), which never resets."""
    kind = "spend cap" if period is None else f"{PERIOD_ADJECTIVES[period]} budget"
    if who == "account" and period is None:
        kind = "budget"
    text = (
        f"{who} {kind} reached: this request may cost up to "
        f"${micros_to_usd(worst_case_micros)} and ${micros_to_usd(max(0, headroom))}"
        f" of the {who}'s ${micros_to_usd(cap_micros)} {kind.split()[-1]} is left after"
        " requests in flight"
    )
    if period is not None:
        text += f"; it resets at {iso_utc(resets_at_ms)}"
    return text
