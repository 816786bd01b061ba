"""A real, throw-away PostgreSQL server for tests: initdb + pg_ctl in a temp dir.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/*/bin``). The
server refuses to run as root, so when the tests run as root it runs as the ``postgres``
user (``runuser``). ``LIVIA_TEST_POSTGRES_URL`` points the tests at an existing server
instead. Each test gets a fresh database (`PostgresServer.new_database`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One postgres server process (or an external one); `url(db)` reaches a database."""

    def __init__(self, base_url: str | None = None) -> None:
        self._external = base_url
        self._dir: Path | None = None
        self._bin: Path | None = None
        self.port = 0

    def _run(self, *argv: str) -> None:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        if self._external:
            return
        pg_bin = find_pg_bin()
        if pg_bin is None:
            raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql)")
        self._bin = pg_bin
        self._dir = Path(tempfile.mkdtemp(prefix="livia-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        data = self._dir / "data"
        self._run(
            str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "livia", "-E", "UTF8"
        )
        self.port = _free_port()
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self._dir / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        if self._external or self._dir is None or self._bin is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(
                str(self._bin / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "immediate", "stop"
            )
        shutil.rmtree(self._dir, ignore_errors=True)

    def pid(self) -> int | None:
        """The server's main process (its backends are its children), when started here."""
        if self._dir is None:
            return None
        try:
            return int((self._dir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, database: str = "postgres") -> str:
        if self._external:
            base, _, _ = self._external.rpartition("/")
            return f"{base}/{database}"
        return f"postgresql://livia@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        import asyncpg

        name = f"t_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            conn = await asyncpg.connect(self.url("postgres"))
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        # Its own loop in a thread: callers may be sync or inside a running loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, create()).result(timeout=60)
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running server for the block (external when LIVIA_TEST_POSTGRES_URL is set)."""
    server = PostgresServer(os.environ.get("LIVIA_TEST_POSTGRES_URL") or None)
    server.start()
    try:
        yield server
    finally:
        server.stop()
