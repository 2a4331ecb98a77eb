"""Serve the app with hypercorn or uvicorn on uvloop, with graceful SIGTERM/SIGINT handling.

``[server] http_server`` picks the HTTP server: hypercorn (the default; HTTP/1.1 and
HTTP/2) or uvicorn with httptools (a faster HTTP/1.1 parser, no HTTP/2; the optional
``relay[uvicorn]`` extra). The app is plain ASGI and knows neither.

relay binds the listening socket itself before the app starts, so a busy port is a
one-line start-up error under either server. On a signal relay stops accepting, gives
in-flight requests and streams ``shutdown_grace_s`` to finish, then cuts what is left
itself (``relay.http.grace``: settled or released, recorded, answered 503 or ended with an
error event and ``[DONE]``) a margin before the server's own cancellation, and the lifespan
drains the database writer before the process exits (non-zero if it could not).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import signal
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import LifespanFailureError

from relay.app import create_app
from relay.config import Config, ServerConfig
from relay.errors import ConfigError
from relay.http.grace import GraceCut
from relay.metrics.listener import MetricsOnlyApp, StateTap
from relay.process_memory import prepare_for_serving

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

__all__ = ["run_server"]

log = logging.getLogger("relay.server")

_BACKLOG = 2048
_KEEP_ALIVE_S = 75
# After the grace period uvicorn cancels the requests still running; they get this long
# to settle and queue their usage rows before the lifespan drains the database.
_SETTLE_AFTER_CANCEL_S = 5.0
# relay cuts the requests left at the end of the grace period itself (with a proper
# answer); the server's own, answerless cancellation is only a backstop this much later.
_CUT_MARGIN_S = 2.0
_LIFESPAN_FAILURES = ("lifespan.startup.failed", "lifespan.shutdown.failed")
_UVICORN_MODULES = ("uvicorn", "httptools")


def run_server(config: Config) -> None:
    if config.server.http_server == "uvicorn":
        _require_uvicorn()
    prepare_for_serving()
    try:
        import uvloop
    except ImportError:  # uvloop is not built for every platform; asyncio's loop works too
        asyncio.run(_serve(config))
        return
    uvloop.run(_serve(config))


def _require_uvicorn() -> None:
    for module in _UVICORN_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"server.http_server = \"uvicorn\" needs {module}: pip install 'relay[uvicorn]'"
            ) from None


async def _serve(config: Config) -> None:
    tls = _tls_files(config)
    listener = _bind(config.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_ignore_cancelled_connections)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tap = StateTap(create_app(config, stopping=stop.is_set))
    app = GraceCut(tap)
    cutter = asyncio.create_task(_cut_after_grace(app, stop, config.server.shutdown_grace_s))
    reloads: set[asyncio.Task[None]] = set()  # held so that a running reload is not collected

    def on_sighup() -> None:
        task = loop.create_task(_reload_on_signal(tap))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    metrics_task = _serve_open_metrics(config, tap, stop)
    log.info("relay listening on %s (%s)", config.server.listen, config.server.http_server)
    try:
        if config.server.http_server == "uvicorn":
            await _serve_uvicorn(app, config.server, tls, listener, stop)
        else:
            await _serve_hypercorn(app, config.server, tls, listener, stop)
    finally:
        cutter.cancel()
        stop.set()
        if metrics_task is not None:
            await metrics_task
    log.info("relay stopped")


async def _cut_after_grace(app: GraceCut, stop: asyncio.Event, grace_s: float) -> None:
    await stop.wait()
    await asyncio.sleep(grace_s)
    cut = app.cut()
    if cut:
        log.warning("shutdown: grace period over, %d requests cut (answered 503)", cut)


async def _reload_on_signal(tap: StateTap) -> None:
    """SIGHUP: re-read the config file; a refused file is logged and the old config stays."""
    reloader = (tap.state or {}).get("reloader")
    if reloader is None:
        log.warning("SIGHUP ignored: relay is not serving yet")
        return
    try:
        await reloader.reload()
    except ConfigError:
        return  # the reloader logged the key at fault; the running config stays


def _serve_open_metrics(
    config: Config, tap: StateTap, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """``[metrics] listen``: a second hypercorn on its own port serving only ``/metrics``."""
    listen = config.metrics.listen
    if listen is None or not config.metrics.enabled:
        return None
    host, _, port = listen.rpartition(":")
    sock = _bind(ServerConfig(listen=listen), what="metrics.listen: ")
    hc = _hypercorn_config(config.server, None, f"fd://{sock.detach()}")
    log.info("metrics listening on %s:%s (no token: keep it private)", host, port)
    app = MetricsOnlyApp(tap)
    return asyncio.create_task(serve(app, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]


def _tls_files(config: Config) -> tuple[str, str] | None:
    """The certificate and key paths, checked now: a bad file is one line, not a traceback."""
    server = config.server
    if server.tls_cert is None or server.tls_key is None:
        return None
    cert = str(config.base_dir_path / server.tls_cert)
    key = str(config.base_dir_path / server.tls_key)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"could not start: server.tls_cert/tls_key: {exc}") from None
    return cert, key


def _bind(server: ServerConfig, what: str = "") -> socket.socket:
    """The listening socket, bound before the app starts so a busy port fails at once."""
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Restart at once: the last run's connections in TIME_WAIT must not hold the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((server.host, server.port))
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"could not start: {what}cannot listen on {server.listen}: {reason}"
        ) from None
    sock.setblocking(False)
    return sock


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


def _last_line(traceback_text: str) -> str:
    """The exception line that ends a traceback's text: the CLI shows one line.

    A failing command is one line on stderr (docs/architecture.md §7).
    """
    lines = [line.strip() for line in traceback_text.splitlines() if line.strip()]
    return lines[-1] if lines else "the application failed"


# ---------------------------------------------------------------- hypercorn


async def _serve_hypercorn(
    app: ASGIApp,
    server: ServerConfig,
    tls: tuple[str, str] | None,
    listener: socket.socket,
    stop: asyncio.Event,
) -> None:
    # hypercorn takes the bound socket over by its file descriptor, and closes it.
    config = _hypercorn_config(server, tls, f"fd://{listener.detach()}")
    try:
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    except LifespanFailureError as exc:
        # A start-up failure (say, a database path that cannot be created) is a one-line
        # CLI error like a config error, not a traceback (docs/architecture.md §7).
        raise ConfigError(_lifespan_failure(exc)) from None


def _hypercorn_config(
    server: ServerConfig, tls: tuple[str, str] | None, bind: str
) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [bind]
    hc.graceful_timeout = server.shutdown_grace_s + _CUT_MARGIN_S
    hc.accesslog = None  # a per-request log line costs throughput; usage rows record requests
    hc.errorlog = logging.getLogger("hypercorn.error")
    # No ``read_timeout``: hypercorn would wrap every read of every connection in
    # ``asyncio.wait_for`` (a task and a timer each: 1.7% of a non-stream request's
    # instructions). A request head trickled byte by byte is cut anyway: hypercorn's idle
    # timer (``keep_alive_timeout``) runs from the connection's start, or the previous
    # answer's end, until a whole head has arrived, however often bytes come; a trickled
    # body is cut by ``body_read_timeout_s`` (408), and an answer by its own deadlines.
    hc.keep_alive_timeout = _KEEP_ALIVE_S
    hc.backlog = _BACKLOG
    if tls is not None:
        hc.certfile, hc.keyfile = tls
    return hc


def _lifespan_failure(exc: LifespanFailureError) -> str:
    """One line from the traceback text hypercorn wraps a lifespan failure in."""
    text = str(exc)
    stage = "start" if text.startswith("Lifespan failure in startup") else "stop cleanly"
    # A header line, then the app's traceback in quotes.
    _, _, traceback_text = text.rstrip("'").partition("\n")
    return f"could not {stage}: {_last_line(traceback_text)}"


# ---------------------------------------------------------------- uvicorn


async def _serve_uvicorn(
    app: ASGIApp,
    server: ServerConfig,
    tls: tuple[str, str] | None,
    listener: socket.socket,
    stop: asyncio.Event,
) -> None:
    uv_server = _uvicorn_server(_uvicorn_config(app, server, tls), stop)
    errors = logging.getLogger("uvicorn.error")
    errors.addFilter(_is_not_a_cancelled_request)
    try:
        with listener:
            await uv_server.serve(sockets=[listener])
    except SystemExit:
        # uvicorn exits when the app's lifespan startup fails; relay says why in one line.
        raise ConfigError(f"could not start: {_uvicorn_lifespan_failure(uv_server)}") from None
    finally:
        errors.removeFilter(_is_not_a_cancelled_request)
    if uv_server.lifespan.shutdown_failed:
        raise ConfigError(f"could not stop cleanly: {_uvicorn_lifespan_failure(uv_server)}")


def _uvicorn_config(
    app: ASGIApp, server: ServerConfig, tls: tuple[str, str] | None
) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app,
        host=server.host,  # for uvicorn's own messages: it serves relay's bound socket
        port=server.port,
        loop="uvloop",  # what run_server runs; serve() itself uses the running loop
        http="httptools",
        ws="none",
        lifespan="on",
        interface="asgi3",
        access_log=False,  # a per-request log line costs throughput; usage rows record requests
        log_config=None,  # keep relay's logging set-up
        log_level=server.log_level,
        proxy_headers=False,  # as under hypercorn: the peer address is the socket's
        backlog=_BACKLOG,
        # uvicorn has no read timeout: the body deadline (read_body, 408) bounds a
        # trickled body; its request-head limits are its parser's own.
        timeout_keep_alive=_KEEP_ALIVE_S,
        # Annotated int, but it is handed to asyncio.wait_for, which takes float seconds.
        timeout_graceful_shutdown=server.shutdown_grace_s + _CUT_MARGIN_S,  # type: ignore[arg-type]
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )


def _uvicorn_server(uv_config: uvicorn.Config, stop: asyncio.Event) -> uvicorn.Server:
    """uvicorn's Server fitted to relay's shutdown (defined here: uvicorn is optional)."""
    import uvicorn
    from uvicorn.lifespan.on import LifespanOn

    class RelayLifespan(LifespanOn):
        def __init__(self, config: uvicorn.Config, requests: set[asyncio.Task[None]]) -> None:
            super().__init__(config)
            self.requests = requests
            self.failure = ""

        async def send(self, message: Any) -> None:
            if message["type"] in _LIFESPAN_FAILURES:
                # Starlette sends the whole traceback for uvicorn to log; relay shows one line.
                self.failure = _last_line(message.get("message") or "")
                message = {"type": message["type"], "message": ""}
            await super().send(message)

        async def shutdown(self) -> None:
            # uvicorn goes on to the lifespan shutdown as soon as it has cancelled what
            # outlived the grace period; those requests settle first (docs/architecture.md §4.2).
            if self.requests:
                await asyncio.wait(set(self.requests), timeout=_SETTLE_AFTER_CANCEL_S)
            await super().shutdown()

    class RelayUvicornServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # relay's loop handlers set ``stop`` instead, one path for both servers:
            # uvicorn's own would force the exit on a second Ctrl+C, skipping the
            # lifespan shutdown and so the database drain.
            yield

        async def on_tick(self, counter: int) -> bool:
            if stop.is_set():
                self.should_exit = True
            return await super().on_tick(counter)

    uv_config.load()
    uv_server = RelayUvicornServer(uv_config)
    uv_config.lifespan_class = functools.partial(
        RelayLifespan, requests=uv_server.server_state.tasks
    )
    return uv_server


def _uvicorn_lifespan_failure(uv_server: uvicorn.Server) -> str:
    failure: str = getattr(uv_server.lifespan, "failure", "") or "the application failed"
    return failure


def _is_not_a_cancelled_request(record: logging.LogRecord) -> bool:
    """Drop uvicorn's traceback for a request cancelled at the end of the grace period.

    That cancellation is how a graceful shutdown ends a stream that outlived it (relay
    settles and records it); it is not an application error.
    """
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))
