"""`livia serve`: the HTTP API, web chat, dashboard and Slack, in one process."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import re
import socket
import sys
from typing import TYPE_CHECKING

import uvicorn

from livia.config import load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("livia.serve")


class _Server(uvicorn.Server):
    """uvicorn that drains Livia's conversations before waiting for open connections."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from livia.app import drain

        await drain(self._app)
        await super().shutdown(sockets=sockets)


#: "livia.store.urls.StoreError: " before a message of ours: the message says it all.
_LIVIA_ERROR = re.compile(r"^livia(\.\w+)*\.\w+: ")


async def _reach_store(url: str) -> None:
    """One round trip to the store, so an unreachable one is refused before anything starts."""
    from livia.store import Store

    await Store.check(url)


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
        sock.listen(2048)
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


def run(args: argparse.Namespace) -> int:
    """Load the settings, bind the port, build the app and serve it until interrupted."""
    from livia.app import build_app  # heavy (SDKs): only when serving, not for `livia --help`
    from livia.store import StoreError, parse_store_url

    settings = load_settings(args.config)
    try:
        parse_store_url(settings.store.url)  # a wrong [store] url is a message now
    except StoreError as exc:
        print(f"livia serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_reach_store(settings.store.url))
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
    log.info(
        "serving on http://%s:%d as %s (stop with Ctrl-C)",
        host,
        port,
        settings.server.resolved_instance_id(),
    )
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep the CLI's logging (one format, secrets redacted)
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = _Server(config, app)
    logging.getLogger("uvicorn.error").addFilter(_OneLineStartupErrors())
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1
