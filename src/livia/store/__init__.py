"""Durable state: the inbox of accepted messages, conversation history, idempotency marks."""

from livia.store.sqlite import Accepted, Status, Store, StoredTurn, StoreError, sqlite_path

__all__ = ["Accepted", "Status", "Store", "StoreError", "StoredTurn", "sqlite_path"]
