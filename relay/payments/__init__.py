"""Payments: Stripe top-ups, manual credits, receipts, auto top-up (docs/architecture.md §9).

The pieces do not read the config themselves: ``relay.payments.runtime.open_payments``
builds them in the lifespan. ``store`` (tables), ``receipts``, ``stripe_client``,
``service`` (checkout, credit once, failures), ``crediting`` (the one transaction that
turns a payment into credit), ``webhook`` (signature + events), ``auto_settings`` and
``auto_topup`` (the check after each settlement; in cluster mode a sweep on the elected
instance), ``backend`` (the records seam: ``SqlitePayments`` embedded, ``pg_backend`` and
``pg_statements`` on PostgreSQL), ``runtime`` (what the lifespan opens).
"""

from __future__ import annotations

__all__: list[str] = []
