"""The web console at ``/console``: a team's balance, keys, logs, billing and tickets.

Server-rendered (Jinja2 templates, SVG charts, a little optional JavaScript); no build
step and nothing from a CDN. ``console_routes()`` is what the app mounts; the pages load
at the first console request (relay.console.mount).
"""

from __future__ import annotations

from relay.console.mount import console_routes

__all__ = ["console_routes"]
