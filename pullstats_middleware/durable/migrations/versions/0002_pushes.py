"""When each tag was last pushed, so a new, never-pulled tag is not mistaken for a stale one.

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
    op.add_column("tag_pulls", sa.Column("last_push_date", sa.String(20)))


def downgrade() -> None:
    with op.batch_alter_table("tag_pulls") as table:
        table.drop_column("last_push_date")
