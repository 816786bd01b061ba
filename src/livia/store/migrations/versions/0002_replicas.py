"""Several processes on one store: message owners and acceptors, conversations, instances.

Existing rows are kept: answered ones count as delivered, pending ones have no owner
(any live process takes them), and each conversation gets its row from its messages.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("owner", sa.Text))
        batch.add_column(sa.Column("claimed_at", sa.Float))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("accepted_by", sa.Text))
        batch.add_column(sa.Column("answered_by", sa.Text))
        batch.add_column(sa.Column("delivered", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE messages SET delivered = 1 WHERE status <> 'pending'")
    op.create_index("messages_conversation", "messages", ["conversation_id", "seq"])
    op.create_index(
        "messages_pending_conversation",
        "messages",
        ["conversation_id", "seq"],
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "messages_undelivered",
        "messages",
        ["seq"],
        sqlite_where=sa.text("delivered = 0"),
        postgresql_where=sa.text("delivered = 0"),
    )
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pending", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("conversations_user", "conversations", ["user_id", "updated_at"])
    op.execute(
        """
        INSERT INTO conversations
            (conversation_id, user_id, channel, title, created_at, updated_at, messages,
             pending)
        SELECT f.conversation_id, f.user_id, f.channel, substr(f.text, 1, 80),
               agg.created_at, agg.updated_at, agg.n, agg.waiting
        FROM (SELECT conversation_id, MIN(seq) AS first_seq, MIN(received_at) AS created_at,
                     MAX(COALESCE(answered_at, received_at)) AS updated_at, COUNT(*) AS n,
                     SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS waiting
              FROM messages GROUP BY conversation_id) AS agg
        JOIN messages AS f ON f.seq = agg.first_seq
        """
    )
    op.create_table(
        "instances",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("instance_id", sa.Text, nullable=False),
        sa.Column("host_key", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("lease", sa.Float, nullable=False),
        sa.Column("snapshot", sa.Text, nullable=False, server_default="{}"),
    )


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_index("conversations_user", "conversations")
    op.drop_table("conversations")
    op.drop_index("messages_undelivered", "messages")
    op.drop_index("messages_pending_conversation", "messages")
    op.drop_index("messages_conversation", "messages")
    with op.batch_alter_table("messages") as batch:
        for column in (
            "delivered",
            "answered_by",
            "accepted_by",
            "attempts",
            "claimed_at",
            "owner",
        ):
            batch.drop_column(column)
