"""relay's command line: ``relay serve`` and the management commands (admin API clients).

``main`` runs one command; ``AdminClient`` is the admin API client every management
command uses; ``CommandError`` is a failed command's one-line message.
"""

from __future__ import annotations

from relay.cli.client import AdminClient, CommandError
from relay.cli.entry import main

__all__ = ["AdminClient", "CommandError", "main"]
