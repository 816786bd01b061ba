"""`[store] url` forms: which database, and the SQLAlchemy async URL that reaches it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from livia.logs import safe_url

__all__ = ["StoreError", "StoreUrl", "parse_store_url", "sqlite_path"]

Backend = Literal["sqlite", "postgresql"]


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says which database and why."""


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed `[store] url`: the backend, the driver URL and a form safe to print."""

    backend: Backend
    engine_url: URL
    #: The URL with any password masked (logs, errors, `livia check`).
    display: str
    #: The SQLite file (or ``:memory:``); empty for PostgreSQL.
    path: str = ""


_USAGE = (
    "use sqlite:///relative/path.db, sqlite:////absolute/path.db "
    "or postgresql://USER:PASSWORD@HOST:PORT/DB"
)


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative`` / ``sqlite:////absolute`` URL (or ``:memory:``).

    Raises `StoreError` for any other scheme.
    """
    prefix = "sqlite://"
    if not url.startswith(prefix):
        raise StoreError(f"unsupported [store] url {safe_url(url)!r}: {_USAGE}")
    rest = url[len(prefix) :]
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise StoreError(f"[store] url {url!r}: expected three slashes, as in sqlite:///var/x.db")
    return rest[1:]


def parse_store_url(url: str) -> StoreUrl:
    """Check `url` and say how to reach it; `StoreError` names what is wrong.

    PostgreSQL URLs (``postgresql://``, ``postgres://`` or ``postgresql+asyncpg://``) use
    asyncpg; a missing password is taken from ``PGPASSWORD``.
    """
    scheme = url.partition("://")[0].lower()
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        path = sqlite_path("sqlite://" + url.partition("://")[2])
        engine = URL.create("sqlite+aiosqlite", database=None if path == ":memory:" else path)
        return StoreUrl("sqlite", engine, url, path)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:
            raise StoreError(f"[store] url {safe_url(url)!r} is not a valid URL: {exc}") from None
        if not parsed.database:
            raise StoreError(f"[store] url {safe_url(url)!r} names no database: {_USAGE}")
        password = parsed.password if parsed.password is not None else os.environ.get("PGPASSWORD")
        engine = parsed.set(drivername="postgresql+asyncpg", password=password)
        return StoreUrl("postgresql", engine, safe_url(url))
    raise StoreError(f"unsupported [store] url {safe_url(url)!r}: {_USAGE}")
