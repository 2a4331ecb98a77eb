"""What the wallet says when a hold does not fit, and the note on a charge row.

The texts a client reads in a 402 (``QuotaError``) and an operator reads on a charge: they
name the limit that refused (balance, key or account budget, which period) and when it
resets, in dollars (``micros_to_usd``), never floats.
"""

from __future__ import annotations

from relay.money.budget import PERIOD_ADJECTIVES, iso_utc
from relay.money.exposure import Capped
from relay.money.pricing import micros_to_usd

__all__ = ["balance_message", "cap_message", "charge_note"]


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
    kind = "spend cap" if window is None else f"{PERIOD_ADJECTIVES[window.period]} budget"
    if who == "account" and window is None:
        kind = "budget"
    text = (
        f"{who} {kind} reached: this request may cost up to "
        f"${micros_to_usd(worst_case_micros)} and ${micros_to_usd(max(0, headroom))}"
        f" of the {who}'s ${micros_to_usd(capped.cap)} {kind.split()[-1]} is left after"
        " requests in flight"
    )
    if window is not None:
        text += f"; it resets at {iso_utc(window.end_ms)}"
    return text
