"""Schema versions: Alembic migrations run at start-up (or by `livia db upgrade`).

Several processes may start at once on one database: on PostgreSQL the upgrade holds an
advisory lock, on SQLite a write transaction (``BEGIN IMMEDIATE``), so exactly one
applies each step and the others find the schema current.
"""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

#: The advisory lock key migrations hold on PostgreSQL ("livia" in ASCII).
_LOCK_KEY = 0x6C69766961


def alembic_config() -> Config:
    """The Alembic configuration for the migrations shipped in this package."""
    cfg = Config()
    cfg.set_main_option("script_location", "livia.store:migrations")
    return cfg


def head_revision() -> str:
    """The newest schema version this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Connection) -> tuple[str | None, str | None]:
    before = _current(conn)
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    return before, _current(conn)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema version the database is at (None: never migrated)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Bring the schema to the newest version; returns (version before, version after)."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        before, after = await conn.run_sync(_upgrade)
    if before != after:
        log.info("store schema upgraded from %s to %s", before or "empty", after)
    return before, after
