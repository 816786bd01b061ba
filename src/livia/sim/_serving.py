"""Running a simulator's HTTP server inside the current event loop, on a real socket.

`SimServer` is the simulators' common base: `async with` starts and stops them.

The socket is bound before the server starts, so a busy port fails at once with an
`OSError` in the caller (not inside a background task), and port 0 gives a free port
that is known as soon as `start` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Self

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)

#: True in the tasks of a simulator's embedded uvicorn (see `_SimulatorRecords`).
_in_simulator: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "livia_in_simulator", default=False
)


class _SimulatorRecords(logging.Filter):
    """uvicorn logs under its own names ("uvicorn.error: Started server process"), so a
    simulator embedded in `livia serve` (demo mode) would repeat the server's own lines.
    Its routine lines are dropped; its warnings and errors are kept, named `livia.sim`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _in_simulator.get():
            return True
        if record.levelno < logging.WARNING:
            return False
        record.name = "livia.sim"
        return True


def _quiet_uvicorn_in_simulators() -> None:
    """Install `_SimulatorRecords` on uvicorn's logger once."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _SimulatorRecords) for f in logger.filters):
        logger.addFilter(_SimulatorRecords())


#: Pending connections the listening socket queues (benchmarks open thousands at once).
BACKLOG = 2048


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready for a server to listen on."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def base_url(host: str, sock: socket.socket) -> str:
    """ "http://HOST:PORT" for a bound socket; a wildcard host becomes the loopback address."""
    port = sock.getsockname()[1]
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return f"http://{host}:{port}"


class SimServer(ABC):
    """A simulated server; `async with server:` serves on a free local port meanwhile."""

    @abstractmethod
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on (host, port) (0: any free port); returns the URL to give a client."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop serving."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class UvicornRunner:
    """Serves one ASGI app with uvicorn as a task of the running event loop.

    `start` returns once the server accepts connections; `stop` shuts it down, waiting at
    most `shutdown_timeout` seconds for open requests before cancelling them.
    """

    def __init__(self, app: ASGIApp, *, shutdown_timeout: float = 2.0) -> None:
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self, host: str, port: int, *, startup_timeout: float = 10.0) -> str:
        """Bind and serve; returns "http://HOST:PORT"."""
        if self._task is not None:
            raise RuntimeError("already started")
        _quiet_uvicorn_in_simulators()
        sock = bind_socket(host, port)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            backlog=BACKLOG,
            timeout_graceful_shutdown=max(1, round(self.shutdown_timeout)),
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(self._serve(server, sock), name="livia-sim-uvicorn")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + startup_timeout
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what went wrong
                raise RuntimeError("the server stopped while starting")
            if loop.time() > deadline:
                await self.stop()
                raise TimeoutError(f"the server did not start within {startup_timeout:g} s")
            await asyncio.sleep(0.005)
        self.url = base_url(host, sock)
        return self.url

    @staticmethod
    async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        _in_simulator.set(True)  # this task and those it starts: see `_SimulatorRecords`
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits the process when lifespan start-up fails
            raise RuntimeError(f"the server failed to start (exit {exc.code})") from None
        finally:
            sock.close()

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout + 5.0)
        except TimeoutError:
            log.warning("simulator server did not stop in time; cancelling it")
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.debug("simulator server ended with an error", exc_info=True)
