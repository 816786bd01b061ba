"""Durable state: the inbox of accepted messages, conversation history, idempotency marks,
shared by every Livia process on the same database (SQLite or PostgreSQL)."""

from livia.store.store import (
    Accepted,
    Completion,
    ConversationInfo,
    Instance,
    Status,
    Store,
    StoredTurn,
    StoreInfo,
)
from livia.store.urls import StoreError, StoreUrl, parse_store_url, sqlite_path

__all__ = [
    "Accepted",
    "Completion",
    "ConversationInfo",
    "Instance",
    "Status",
    "Store",
    "StoreError",
    "StoreInfo",
    "StoreUrl",
    "StoredTurn",
    "parse_store_url",
    "sqlite_path",
]
