"""relay's command line: ``relay serve`` and the management commands (admin API clients)."""

from __future__ import annotations

from relay.cli.entry import main

__all__ = ["main"]
