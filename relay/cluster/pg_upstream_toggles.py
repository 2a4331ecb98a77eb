"""An operator's upstream key enable/disable, on every instance.

Embedded, ``POST /admin/upstreams/{provider}/keys/{n}/enable|disable`` changes the one
process's key pool. In cluster mode every instance has its own pool (from the same config
file), so the change must reach each. Its record is the audit row the route appends to
PostgreSQL's chain (``upstream.enable`` / ``upstream.disable``, detail: provider, position
and the key's fingerprint, ``relay.upstream.fingerprint``); the route then announces
``upstream`` on the invalidation bus, and every instance replays the toggle rows it has not
applied yet, in id order (``catch_up``). The same replay runs on a full reload (``all``:
start-up, a lost message), so an instance started later, or one that missed the message,
ends with the same keys taken out of rotation.

A row is replayed on the key with its fingerprint, wherever a reload has moved it (as an
embedded reload matches keys by value); a key no longer configured takes its toggles with
it. Rows written before fingerprints were recorded name only a position (``#1`` is the
first of ``api_keys``) and replay by it, as they always did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from relay.upstream.fingerprint import KeyFingerprints
from relay.upstream.keypool import OPERATOR_ACTIONS, UpstreamKey
from relay.upstream.providers import Provider

__all__ = ["UpstreamToggles"]

log = logging.getLogger(__name__)

_ACTIONS = tuple(OPERATOR_ACTIONS)
# A replay reads the toggles' rows by id through the partial index audit_upstream_toggles
# (schema entry 16, relay/storage/schema_lookups.py), not the whole chain.


class _Toggle(msgspec.Struct):
    provider: str
    position: int
    fingerprint: str = ""  # absent from rows recorded before it was


_decode_toggle = msgspec.json.Decoder(_Toggle).decode


class UpstreamToggles:
    """One instance's replay of the cluster's upstream toggles (the last applied id)."""

    def __init__(self, pool: Any, fingerprints: KeyFingerprints) -> None:
        self._pool = pool
        self._fingerprints = fingerprints
        self._applied_id = 0
        # The listener and the heartbeat's full reload may both replay: one at a time, so
        # the rows are applied in id order.
        self._lock = asyncio.Lock()

    async def catch_up(self, providers: Mapping[str, Provider]) -> int:
        """Apply every toggle recorded after the last one applied here; how many."""
        async with self._lock:
            rows = await self._pool.fetch(
                "SELECT id, action, detail FROM audit"
                f" WHERE action IN {_ACTIONS!r} AND id > $1 ORDER BY id",
                self._applied_id,
            )
            for row in rows:
                self._apply(providers, str(row["action"]), str(row["detail"]))
                self._applied_id = int(row["id"])
            return len(rows)

    def _apply(self, providers: Mapping[str, Provider], action: str, detail: str) -> None:
        toggle = _decode_toggle(detail)
        provider = providers.get(toggle.provider)
        key = None if provider is None else self._key_of(provider, toggle)
        if key is None:
            # Named reason: the config read here no longer has that key (a reload removed
            # it); nothing to apply, as an embedded reload drops a removed key's state.
            log.info("cluster: toggle of %s#%d skipped", toggle.provider, toggle.position)
            return
        key.set_by_operator(enable=OPERATOR_ACTIONS[action])

    def _key_of(self, provider: Provider, toggle: _Toggle) -> UpstreamKey | None:
        """The toggled key in this instance's pool: the one with the row's fingerprint (the
        one at the row's position if the same value is configured twice), or for an older
        row without one, the key at its position."""
        keys = provider.pool.keys
        at_position = keys[toggle.position - 1] if 1 <= toggle.position <= len(keys) else None
        if not toggle.fingerprint:
            return at_position
        if at_position is not None and self._matches(at_position, toggle.fingerprint):
            return at_position
        return next((key for key in keys if self._matches(key, toggle.fingerprint)), None)

    def _matches(self, key: UpstreamKey, fingerprint: str) -> bool:
        return self._fingerprints.of(key.secret) == fingerprint
