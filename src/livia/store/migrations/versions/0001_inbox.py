"""The first schema: the inbox/history table and idempotency marks.

A `var/livia.db` written before migrations existed already has these tables (its
``PRAGMA user_version`` is 1): they are kept as they are, rows included.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "messages" not in existing:
        op.create_table(
            "messages",
            sa.Column(
                "seq",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
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
            sa.UniqueConstraint("conversation_id", "message_id"),
            sqlite_autoincrement=True,
        )
        op.create_index(
            "messages_pending",
            "messages",
            ["status"],
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )
    if "marks" not in existing:
        op.create_table(
            "marks",
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("expires", sa.Float, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("marks")
    op.drop_table("messages")
