"""Alembic migrations of the store's schema (run by `livia.store.migrate`)."""
