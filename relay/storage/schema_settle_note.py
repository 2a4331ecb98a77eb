"""Entry 19 (PostgreSQL only): a charge's overrun note in the embedded wallet's words.

When an upstream reports more than a hold's worst case, the charge is the worst case and
its ledger note says so. The embedded wallet writes ``overrun: measured N micros, billed
the worst case W micros`` (``relay.money.quota_messages.charge_note``); entry 17's
``relay_settle`` wrote ``overrun: measured N micros, charged the worst case``, so the
same ledger read differently on the two engines. This entry replaces that function with
entry 17's own definition, that phrase alone changed. Entry 17's text is released and
never edited, so the definition taken from it cannot drift.
"""

from __future__ import annotations

from relay.storage.schema_recent_spend import POSTGRESQL_RECENT_SPEND

__all__ = ["POSTGRESQL_SETTLE_NOTE"]

_ENTRY_17_NOTE = "'overrun: measured ' || p_cost || ' micros, charged the worst case'"
_EMBEDDED_NOTE = (
    "'overrun: measured ' || p_cost || ' micros, billed the worst case '"
    " || h.worst_case_micros || ' micros'"
)


def _settle_with_the_embedded_note(entry_17: str) -> str:
    start = entry_17.index("CREATE FUNCTION relay_settle(")
    end = entry_17.index("END $$;", start) + len("END $$;")
    definition = entry_17[start:end]
    if definition.count(_ENTRY_17_NOTE) != 1:
        raise RuntimeError("entry 17's relay_settle no longer writes the note entry 19 replaces")
    replaced = definition.replace(_ENTRY_17_NOTE, _EMBEDDED_NOTE)
    return replaced.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1) + "\n"


POSTGRESQL_SETTLE_NOTE = _settle_with_the_embedded_note(POSTGRESQL_RECENT_SPEND)
