"""`livia serve`: the HTTP API, web chat, dashboard and Slack, in one process."""

from __future__ import annotations

import argparse
import logging
import socket
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


class _OneLineStartupErrors(logging.Filter):
    """uvicorn logs a failed start-up as a whole traceback: keep its last line, the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback"):
            log.debug("start-up failed:\n%s", message)
            record.msg = "cannot start: %s"
            record.args = (message.strip().splitlines()[-1],)
        return True


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--host", help="address to listen on (default: [server] host)")
    parser.add_argument("--port", type=int, help="port to listen on (default: [server] port)")


def run(args: argparse.Namespace) -> int:
    """Load the settings, build the app and serve it until interrupted."""
    from livia.app import build_app  # heavy (SDKs): only when serving, not for `livia --help`
    from livia.store import sqlite_path

    settings = load_settings(args.config)
    sqlite_path(settings.store.url)  # a wrong [store] url is a message now, not at start-up
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    log.info("serving on http://%s:%d (stop with Ctrl-C)", host, port)
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
    server.run()
    return 0 if server.started else 1
