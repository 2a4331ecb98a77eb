"""Serve the app with hypercorn on uvloop, with graceful SIGTERM/SIGINT handling.

On a signal relay stops accepting, gives in-flight requests and streams
``shutdown_grace_s`` to finish (then cancels them, which settles them), and the
lifespan drains the database writer before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import LifespanFailureError

from relay.app import create_app
from relay.config import Config
from relay.errors import ConfigError

__all__ = ["run_server"]

log = logging.getLogger("relay.server")


def _hypercorn_config(config: Config) -> HypercornConfig:
    server = config.server
    hc = HypercornConfig()
    hc.bind = [server.listen]
    hc.graceful_timeout = server.shutdown_grace_s
    hc.accesslog = None  # a per-request log line costs throughput; usage rows record requests
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75
    hc.backlog = 2048
    if server.tls_cert and server.tls_key:
        hc.certfile = str(config.base_dir_path / server.tls_cert)
        hc.keyfile = str(config.base_dir_path / server.tls_key)
    return hc


def _ignore_cancelled_connections(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop the spurious traceback of a connection cancelled at shutdown.

    After the grace period hypercorn cancels the connections still open; on Python 3.11
    asyncio.streams then calls ``exception()`` on the cancelled connection task (3.12
    checks ``cancelled()`` first), which raises CancelledError into the loop's exception
    handler. That cancellation is the intended end of a graceful shutdown, not an error.
    """
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_ignore_cancelled_connections)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(config, stopping=stop.is_set)
    log.info("relay listening on %s", config.server.listen)
    try:
        await serve(app, _hypercorn_config(config), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    except LifespanFailureError as exc:
        # A start-up failure (say, a database path that cannot be created) is a one-line
        # CLI error like a config error, not a traceback (design §7).
        raise ConfigError(_lifespan_failure(exc)) from None
    log.info("relay stopped")


def _lifespan_failure(exc: LifespanFailureError) -> str:
    """One line from the traceback text hypercorn wraps a lifespan failure in."""
    text = str(exc)
    stage = "start" if text.startswith("Lifespan failure in startup") else "stop cleanly"
    lines = [line.strip() for line in text.rstrip("'").splitlines() if line.strip()]
    return f"could not {stage}: {lines[-1] if len(lines) > 1 else 'the application failed'}"


def run_server(config: Config) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is not built for every platform; asyncio's loop works too
        asyncio.run(_serve(config))
        return
    uvloop.run(_serve(config))
