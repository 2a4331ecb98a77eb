"""Which limit changes a member may make to a key: only ones that tighten it.

A member manages the keys they created, but an owner or admin may have limited such a
key afterwards (a spend cap, a lower rate, fewer models); the member must not be able
to lift that. So for a member every limit may only move towards "less": a cap or rate
may be set or lowered (0 means unlimited, so never back to 0), concurrency lowered, the
model and endpoint lists narrowed (empty means all), the expiry set or brought forward.
Renaming is always allowed. Owners and admins change limits freely.
"""

from __future__ import annotations

from relay.identity.accounts import ApiKey

__all__ = ["loosened_limits"]

# (field, what the form calls it) for limits where 0 means "no limit".
_CAPS = (("spend_cap_micros", "spend cap"), ("rpm", "RPM"), ("tpm", "TPM"))


def _cap_loosened(before: int, after: int) -> bool:
    if before == 0:
        return False  # nothing to lift: any cap is tighter
    return after == 0 or after > before


def _scope_loosened(before: tuple[str, ...], after: tuple[str, ...]) -> bool:
    if not before:
        return False  # everything allowed before
    return not after or not set(after) <= set(before)


def loosened_limits(before: ApiKey, after: ApiKey) -> list[str]:
    """The names of the limits ``after`` lifts compared with ``before`` (empty: none)."""
    loosened = [
        name
        for field, name in _CAPS
        if _cap_loosened(getattr(before, field), getattr(after, field))
    ]
    if after.concurrency > before.concurrency:
        loosened.append("concurrency")
    if _scope_loosened(before.models, after.models):
        loosened.append("models")
    if _scope_loosened(before.endpoints, after.endpoints):
        loosened.append("endpoints")
    if before.expires_at_ms is not None and (
        after.expires_at_ms is None or after.expires_at_ms > before.expires_at_ms
    ):
        loosened.append("expiry")
    return loosened
