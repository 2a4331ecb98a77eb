"""Payments: Stripe top-ups, manual credits, receipts, auto top-up (see design §9).

The pieces do not read the config themselves: ``relay.admin.payments.open_payments``
builds them in the lifespan. ``store`` (tables), ``receipts``, ``stripe_client``,
``service`` (checkout, credit once, failures), ``webhook`` (signature + events),
``auto_settings`` and ``auto_topup`` (the post-settlement trigger).
"""

from __future__ import annotations

__all__: list[str] = []
