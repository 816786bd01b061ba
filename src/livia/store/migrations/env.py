"""Alembic's environment: always run on the connection `livia.store.migrate` hands over."""

from __future__ import annotations

from alembic import context

from livia.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `livia.store.migrate` runs these
    raise RuntimeError("run migrations with `livia db upgrade` (livia.store.migrate)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
