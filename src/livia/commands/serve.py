"""`livia serve`: the HTTP API, web chat, dashboard and Slack, in one process or several.

With ``--workers N`` (``[server] workers``) the parent binds the port, forks N workers
that each run the whole app on that one socket (the kernel spreads connections), forwards
SIGINT/SIGTERM to them and exits once they have all stopped. Workers share the store and,
through Redis, the limits.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import re
import resource
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from livia.config import Settings, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("livia.serve")

#: Seconds a client has to send a request's headers (from connecting, or from the end of
#: the previous response): slowloris and silent connections are closed after this.
HEADER_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE = 5.0
#: Most bytes of a request's line and headers (h11's bound); beyond it the answer is 431.
MAX_HEADER_BYTES = 64 * 1024
#: Most open connections; over it a new one is closed at once (before any fd limit bites).
MAX_CONNECTIONS = 4096
#: File descriptors kept free for everything else (the store, Redis, upstream clients, logs).
FD_RESERVE = 256
#: Most requests in progress at once; beyond it uvicorn answers 503.
LIMIT_CONCURRENCY = 2048
#: The listen backlog (connections the kernel queues before they are accepted).
BACKLOG = 2048
#: Seconds open requests get after the drain to send their last event before streams close.
STREAM_FLUSH = 2.0
#: The collector's thresholds (CPython's are 700, 10, 10): a message's objects live for
#: seconds, so at hundreds of messages a second most outlived two young collections and
#: piled up in the oldest generation, whose collections walk everything alive.
GC_THRESHOLDS = (50_000, 50, 100)
#: Seconds between two log lines about the same accept error (EMFILE…): the rest are counted.
ACCEPT_ERROR_LOG_EVERY = 10.0


class _HeadersTooLarge(Exception):
    """A request's line and headers passed `MAX_HEADER_BYTES`."""


class _GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools' C parser: h11's pure-Python one cost
    about a twentieth of a busy server's CPU) with a header-read timeout and a
    connection cap.

    - A connection must deliver a request's complete headers within `HEADER_TIMEOUT`
      of connecting (or of its previous response ending): slowloris and silent
      connections are closed, never held for ever.
    - Over `max_connections` open connections, a new one is closed at once, so file
      descriptors stay available for the connections already served.
    - A request line and headers over `MAX_HEADER_BYTES` are answered 431 and the
      connection closed (httptools itself sets no bound).
    """

    max_connections = MAX_CONNECTIONS
    header_timeout = HEADER_TIMEOUT
    refused = 0
    timed_out = 0
    #: Per connection: a request has begun and its headers are not complete; the bytes
    #: read meanwhile; whether its headers passed `MAX_HEADER_BYTES`.
    _headers_pending = False
    _header_bytes = 0
    _oversized = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) >= self.max_connections:
            type(self).refused += 1
            self.transport = transport
            transport.abort()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        self._header_bytes = 0  # bytes read while this request's headers are incomplete
        self._headers_pending = True
        super().on_message_begin()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # httptools keeps an unfinished header in a buffer it grows by copying (quadratic):
        # bound what a request may send before its headers are complete.
        if self._headers_pending and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._oversized = True
                self.send_400_response("")

    def on_headers_complete(self) -> None:
        self._headers_pending = False
        self._cancel_header_timer()  # a request is in: its headers are complete
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEADER_BYTES:  # complete, but too large (one read can hold them all)
            self._oversized = True
            raise _HeadersTooLarge  # the parser stops; `send_400_response` answers 431
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._oversized:
            super().send_400_response(msg)
            return
        body = b"Request header fields too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and not self.transport.is_closing():
            type(self).timed_out += 1
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self.flow is None:  # refused in connection_made: nothing else was set up
            self.connections.discard(self)
            return
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.flow is not None:  # else refused in connection_made: nothing to drain
            super().shutdown()


class _AcceptErrorLog:
    """A loop exception handler that logs one accept error (EMFILE…) per interval, with
    the count since the last line, instead of one line per failed accept."""

    def __init__(self, every: float = ACCEPT_ERROR_LOG_EVERY) -> None:
        self.every = every
        self.suppressed = 0
        self._last = -1e9

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" not in message:
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self.every:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        exc = context.get("exception")
        log.error("cannot accept connections: %s%s; retrying", exc or message, more)
        self._last = now
        self.suppressed = 0


def _raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _freeze_startup_objects() -> int:
    """Leave what start-up built (modules, SDK types, the app) out of every later garbage
    collection: each full collection walked them all, 120–290 ms with the loop stopped,
    every few seconds under load (measured at 1 000 conversations), freeing nothing.
    Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    frozen = gc.get_freeze_count()
    log.debug("garbage collector: %d start-up objects frozen", frozen)
    return frozen


class _Server(uvicorn.Server):
    """uvicorn that drains Livia's conversations before waiting for open connections.

    Event streams are not closed on the exit signal (sse-starlette's default): the drain
    lets turns finish for its grace, each open stream ends with its ``done`` event, or
    an ``error`` event saying the message is kept; then the streams still open are closed.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(_AcceptErrorLog())
        await super().startup(sockets=sockets)
        frozen = _freeze_startup_objects()
        livia = getattr(self._app.state, "livia", None)
        if livia is not None and livia.loop_lag is not None:
            livia.loop_lag.note_frozen(frozen)  # shown in /stats "loop"

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from sse_starlette.sse import AppStatus

        from livia.app import drain

        await drain(self._app)
        # Every waiter has its reply or its error now: give the streams a moment to send
        # their last event, then close those still open.
        deadline = time.monotonic() + STREAM_FLUSH
        while self.server_state.tasks and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        AppStatus.should_exit = True
        await super().shutdown(sockets=sockets)


#: "livia.store.urls.StoreError: " before a message of ours: the message says it all.
_LIVIA_ERROR = re.compile(r"^livia(\.\w+)*\.\w+: ")


async def _reach_store(url: str, *, migrate: bool = False) -> None:
    """One round trip to the store, so an unreachable one is refused before anything starts;
    with `migrate`, bring its schema up to date once (before several workers open it)."""
    from livia.store import Store

    await Store.check(url)
    if migrate:
        await Store.upgrade(url)


class _OneLineStartupErrors(logging.Filter):
    """uvicorn logs a failed start-up as a whole traceback: keep its last line, the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback"):
            log.debug("start-up failed:\n%s", message)
            record.msg = "cannot start: %s"
            record.args = (_LIVIA_ERROR.sub("", message.strip().splitlines()[-1]),)
        return True


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--host", help="address to listen on (default: [server] host)")
    parser.add_argument("--port", type=int, help="port to listen on (default: [server] port)")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving the port (default: [server] workers, 1); more than one "
        'needs [coordination] backend = "redis"',
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, taken before anything else starts.

    A process that cannot have its port must not start: it would otherwise take over
    (and answer a second time) messages a live server holds. Raises `ServeError`.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}: {exc.strerror}; set --host") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} is in use on {host}; set --port or LIVIA_SERVER__PORT"
            ) from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class ServeError(RuntimeError):
    """`livia serve` cannot start; the message says why in one line."""


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for Livia: bounded connections, header and keep-alive timeouts,
    and event streams that outlive the exit signal until the drain has ended them."""
    from sse_starlette.sse import AppStatus

    AppStatus.disable_automatic_graceful_drain()  # `_Server.shutdown` ends the streams
    fds = _raise_fd_limit()
    _GuardedHttp.max_connections = max(16, min(MAX_CONNECTIONS, fds - FD_RESERVE))
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep the CLI's logging (one format, secrets redacted)
        access_log=False,
        lifespan="on",
        loop="auto",  # uvloop where installed (the default; ~14 % less CPU at load), else asyncio
        http=_GuardedHttp,
        timeout_keep_alive=int(KEEP_ALIVE),
        limit_concurrency=LIMIT_CONCURRENCY,
        backlog=BACKLOG,
        timeout_graceful_shutdown=10,
    )


def run(args: argparse.Namespace) -> int:
    """Load the settings, bind the port, build the app and serve it until interrupted."""
    from livia.store import StoreError, parse_store_url

    settings = load_settings(args.config)
    workers = settings.server.workers if getattr(args, "workers", None) is None else args.workers
    if workers < 1:
        print("livia serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers > 1 and settings.coordination.backend != "redis":
        print(
            f"livia serve: {workers} workers would each allow the whole of every limit; "
            'set [coordination] backend = "redis" (LIVIA_COORDINATION__BACKEND=redis) '
            "so they share them, or run one worker",
            file=sys.stderr,
        )
        return 2
    try:
        parse_store_url(settings.store.url)  # a wrong [store] url is a message now
    except StoreError as exc:
        print(f"livia serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_reach_store(settings.store.url, migrate=workers > 1))
    except StoreError as exc:
        print(f"livia serve: {exc}", file=sys.stderr)
        return 1
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    try:
        sock = bind(host, port)
    except ServeError as exc:
        print(f"livia serve: {exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    if workers > 1:
        log.info("serving on http://%s:%d with %d workers (stop with Ctrl-C)", host, port, workers)
        return _serve_workers(settings, sock, host, port, workers)
    log.info(
        "serving on http://%s:%d as %s (stop with Ctrl-C)",
        host,
        port,
        settings.server.resolved_instance_id(),
    )
    try:
        return _serve_one(settings, sock, host, port)
    finally:
        sock.close()


def _serve_one(settings: Settings, sock: socket.socket, host: str, port: int) -> int:
    """Run the app on the bound socket until a stop signal; 0 if it started."""
    from livia.app import build_app  # heavy (SDKs): only when serving, not for `livia --help`

    app = build_app(settings)
    config = uvicorn_config(app, host, port)
    server = _Server(config, app)
    logging.getLogger("uvicorn.error").addFilter(_OneLineStartupErrors())
    server.run(sockets=[sock])
    return 0 if server.started else 1


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker `index`'s settings: its own instance id (``instance_id-wN``, or HOSTNAME-PID
    of the worker when unset)."""
    base = settings.server.instance_id
    if not base:
        return settings
    server = settings.server.model_copy(update={"instance_id": f"{base}-w{index}"})
    return settings.model_copy(update={"server": server})


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this worker when the parent dies (kill -9)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _serve_workers(
    settings: Settings, sock: socket.socket, host: str, port: int, workers: int
) -> int:
    """Fork `workers` processes serving `sock`; forward stop signals; wait for them all.

    A worker that exits on its own (a failed start, a crash) stops the others: the parent
    exits 1 rather than serve with fewer processes than configured.
    """
    children: dict[int, int] = {}
    stopping = False
    forwarded: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        forwarded.add(signum)
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(workers):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the parent's code
                code = 1
                try:
                    for sig in previous:
                        signal.signal(sig, signal.SIG_DFL)
                    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent, which forwards it
                    _die_with_parent()
                    ours = worker_settings(settings, index)
                    log.info(
                        "worker %d (pid %d) serving as %s",
                        index,
                        os.getpid(),
                        ours.server.resolved_instance_id(),
                    )
                    code = _serve_one(ours, sock, host, port)
                except BaseException:
                    log.exception("worker %d failed", index)
                finally:
                    logging.shutdown()
                    os._exit(code)
            children[pid] = index
        sock.close()  # only the workers accept
        failed = False
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(status)
            # uvicorn re-raises the stop signal once it has shut down: that is a clean stop
            if code != 0 and -code not in forwarded:
                failed = True
            if not stopping:
                log.error(
                    "worker %d (pid %d) exited (status %d); stopping the others", index, pid, code
                )
                failed = True
                forward(signal.SIGTERM, None)
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
