"""Is the storage keeping up? The one answer the admission step, ``/healthz`` and the
admin API ask before taking on work that must be recorded (fail closed,
docs/architecture.md §4.1).

Storage is *unavailable* while the oldest write not yet committed has waited longer
than ``stall_s`` (the writer keeps retrying: a lock held past ``busy_timeout``, a full
disk, a read-only file system), at once when the last commit failed for a reason that
does not pass by itself (disk full, read-only, I/O error: every request admitted then
adds to what may never be written), or while more writes are queued than ``max_backlog``.
Both clear by themselves the moment the writer commits its backlog, so relay recovers
without an operator. Nothing is cached: each question reads the writer's state (O(1)).
"""

from __future__ import annotations

from relay.errors import StorageUnavailable
from relay.storage.db import Database

__all__ = ["DEFAULT_MAX_BACKLOG", "StorageHealth"]

# Well below the writer's queue bound (10,000), so in-flight settlements always fit.
DEFAULT_MAX_BACKLOG = 5_000
_RETRY_AFTER_S = 1.0


class StorageHealth:
    def __init__(
        self, db: Database, *, stall_s: float = 2.0, max_backlog: int = DEFAULT_MAX_BACKLOG
    ) -> None:
        self._db = db
        self._stall_s = stall_s
        self._max_backlog = max_backlog

    def problem(self) -> str | None:
        """Why the storage cannot take more work now, or None when it can."""
        backlog = self._db.pending_writes
        if backlog > self._max_backlog:
            return f"{backlog} writes waiting for the database (limit {self._max_backlog})"
        stalled = self._db.stalled_for()
        # A disk that failed stays suspect for stall_s even when nothing is left to write
        # (durable writes given up): the next admitted request would only find it again.
        broken = self._db.hard_fault and (stalled > 0 or self._db.since_fault() < self._stall_s)
        if stalled > self._stall_s or broken:
            fault = self._db.last_fault
            why = f": {fault}" if fault else ""
            return f"the database could not commit for {stalled:.1f} s{why}"
        return None

    def check(self) -> None:
        """Raise ``StorageUnavailable`` (503, retry-after) while there is a problem."""
        problem = self.problem()
        if problem is not None:
            raise StorageUnavailable(
                f"relay cannot record requests right now ({problem}); retry shortly",
                retry_after_s=_RETRY_AFTER_S,
            )
