"""The console as the app mounts it: its pages are loaded by the first console request.

The pages are 74 modules and Jinja2: about 60 ms of a 0.6 s start and 3 MB of the
baseline RSS (docs/performance.md, "Start-up time and resident memory"), paid by every
relay that serves only the API. The first request under ``/console/`` imports them
instead; the console's own stores already open at that request (``Console.services``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import Receive, Scope, Send

__all__ = ["console_routes"]


async def _to_console(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=308)


class _PagesOnFirstRequest:
    """The console's router, built when a request first reaches it."""

    def __init__(self) -> None:
        self._router: Router | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._router is None:
            # Imported here, not at start-up: see the module docstring.
            from relay.console.routes import console_pages

            self._router = Router(routes=console_pages())
        await self._router(scope, receive, send)


def console_routes() -> list[BaseRoute]:
    """The web console: pages under ``/console/``, its static files, and a bare redirect."""
    return [Route("/console", _to_console), Mount("/console", app=_PagesOnFirstRequest())]
