"""Indexes for two lookups that would otherwise scan: a stored response's owner, and an
alert's re-arm check. Both engines alike."""

from __future__ import annotations

__all__ = ["LOOKUP_INDEXES", "POSTGRESQL_UPSTREAM_TOGGLES"]

# GET/DELETE /v1/responses/{id} asks which provider created the id for this account: with
# only (account_id, id) to search, an unknown id walked every row of the account's 90 days,
# and any client may ask for any id. Partial: only Responses API rows carry the entry, so
# the other requests' inserts skip it. An alert is queued only when the same (sink, event,
# subject) was not queued within the re-arm interval; the same index answers the newest
# row of each at start-up.
LOOKUP_INDEXES = """
CREATE INDEX usage_responses ON usage (upstream_request_id) WHERE endpoint = 'responses';
CREATE INDEX alert_outbox_rearm ON alert_outbox (sink_index, event, subject, created_at_ms);
"""

# Cluster mode: every instance replays the operator's upstream key toggles from the audit
# chain (relay.cluster.pg_upstream_toggles), reading only those rows, by id. The actions
# are relay.upstream.keypool.OPERATOR_ACTIONS (a test checks they still match).
POSTGRESQL_UPSTREAM_TOGGLES = """
CREATE INDEX audit_upstream_toggles ON audit (id)
    WHERE action IN ('upstream.enable', 'upstream.disable');
"""
