"""The store's tables, as SQLAlchemy Core metadata (the migrations create and change them).

- ``messages``: every accepted message; the inbox while ``status = 'pending'``, the history
  afterwards. ``owner`` is the process (an ``instances`` row) answering it now,
  ``accepted_by`` the one that took it from its channel and delivers its reply.
- ``conversations``: one row per conversation: who started it, a title, counters. Its row
  lock orders the messages of one conversation across processes.
- ``instances``: the live processes, each with a heartbeat and its monitoring snapshot.
  A process is alive while ``heartbeat_at + lease`` is ahead of the database's clock.
- ``marks``: idempotency marks that expire (Slack event ids, thread memberships).
- ``api_keys``: per-user API keys, hashed (``key_id`` is the public part of a key).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: Integer primary key that is SQLite's rowid alias and PostgreSQL's bigint identity.
SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("reply", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("answered_at", sa.Float),
    sa.Column("owner", sa.Text),
    sa.Column("claimed_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("accepted_by", sa.Text),
    sa.Column("answered_by", sa.Text),
    sa.Column("delivered", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("conversation_id", "message_id"),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("conversation_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
    #: Messages not answered yet: 1 after an intake means it is the oldest pending one.
    sa.Column("pending", sa.Integer, nullable=False, server_default="0"),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("owner", sa.Text, primary_key=True),
    sa.Column("instance_id", sa.Text, nullable=False),
    sa.Column("host_key", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("lease", sa.Float, nullable=False),
    sa.Column("snapshot", sa.Text, nullable=False, server_default="{}"),
)

marks = sa.Table(
    "marks",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("expires", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Index("api_keys_user", "user_id"),
)
