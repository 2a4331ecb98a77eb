"""Instance leases in PostgreSQL: every hold belongs to a live instance, or is released.

An instance registers with a lease (``[cluster] lease_s``) and renews it from a heartbeat
at a third of that period. Holds carry their instance's id, not a lease of their own, so a
long stream needs no per-hold renewal. When an instance dies (kill -9, a lost machine), its
lease runs out and the next sweep by any instance (``reap_expired``) releases its holds
uncharged and records each as abandoned (``abandoned_holds``). A lease is fenced: once it
has run out it cannot be renewed (``LeaseLost``), ``relay_hold`` refuses to place holds for
it, and a late settlement of a reaped hold charges nothing — so a paused instance that
wakes up after its holds were released can never push an account past its headroom.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

__all__ = ["InstanceLease", "LeaseLost", "ReapResult", "reap_expired"]


class LeaseLost(RuntimeError):
    """This instance's lease ran out (its holds may be released): it must stop serving
    money-bearing requests and register again under a new id."""


class ReapResult(msgspec.Struct, frozen=True):
    instances_reaped: int
    holds_released: int


class InstanceLease:
    """One instance's registration; ``instance_id`` is random per process start."""

    def __init__(self, pool: Any, instance_id: str, lease_s: float) -> None:
        self._pool = pool
        self.instance_id = instance_id
        self.lease_s = lease_s

    @classmethod
    async def register(cls, pool: Any, lease_s: float, *, name: str = "") -> InstanceLease:
        """Insert this instance's row with a lease of ``lease_s`` seconds from the database's
        clock (never an instance's own: their clocks may disagree)."""
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        instance_id = f"{name or 'relay'}-{secrets.token_hex(6)}"
        await pool.execute(
            "INSERT INTO instances (id, lease_s, lease_expires_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $2))",
            instance_id,
            float(lease_s),
        )
        return cls(pool, instance_id, lease_s)

    @property
    def heartbeat_interval_s(self) -> float:
        return self.lease_s / 3

    async def renew(self) -> None:
        """Extend the lease; ``LeaseLost`` if it already ran out (fencing, see module doc)."""
        row = await self._pool.fetchval(
            "UPDATE instances SET lease_expires_at = now() + make_interval(secs => lease_s)"
            " WHERE id = $1 AND lease_expires_at > now() RETURNING id",
            self.instance_id,
        )
        if row is None:
            raise LeaseLost(f"instance {self.instance_id}: lease expired; register again")

    async def retire(self) -> None:
        """Graceful shutdown after every request has settled: expire the lease now, so a
        sweep releases whatever is left (nothing, after a clean drain)."""
        await self._pool.execute(
            "UPDATE instances SET lease_expires_at = now() WHERE id = $1", self.instance_id
        )


async def reap_expired(pool: Any) -> ReapResult:
    """Release the holds of every instance whose lease ran out (any instance may sweep; two
    sweeping at once never release a hold twice: each hold row is deleted once)."""
    row = await pool.fetchrow("SELECT * FROM relay_reap_expired()")
    return ReapResult(
        instances_reaped=int(row["instances_reaped"]), holds_released=int(row["holds_released"])
    )
