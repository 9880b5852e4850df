"""Who pulled each tag and manifest each day, as a HyperLogLog sketch: unique pullers.

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
    op.add_column("tag_daily", sa.Column("pullers", sa.LargeBinary()))
    op.add_column("manifest_daily", sa.Column("pullers", sa.LargeBinary()))


def downgrade() -> None:
    for table in ("tag_daily", "manifest_daily"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("pullers")
