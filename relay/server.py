"""Serve the app with hypercorn on uvloop, with graceful SIGTERM/SIGINT handling.

On a signal relay stops accepting, gives in-flight requests and streams
``shutdown_grace_s`` to finish (then cancels them, which settles them), and the
lifespan drains the database writer before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from relay.app import create_app
from relay.config import Config

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


async def _serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(config)
    log.info("relay listening on %s", config.server.listen)
    await serve(app, _hypercorn_config(config), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    log.info("relay stopped")


def run_server(config: Config) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is not built for every platform; asyncio's loop works too
        asyncio.run(_serve(config))
        return
    uvloop.run(_serve(config))
