"""Per-user API keys: a request with a key acts as the key's user (issue 10, item 1).

Only a hash of each key is stored (SHA-256 of a 256-bit random secret); ``key_id`` is the
public part, printed by ``livia keys list`` and written inside the key itself.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
    )
    op.create_index("api_keys_user", "api_keys", ["user_id"])


def downgrade() -> None:
    op.drop_index("api_keys_user", "api_keys")
    op.drop_table("api_keys")
