"""An index on the day of daily rows: the flush worker deletes days past
PULL_METRICS_HISTORY_DAYS without reading the whole table.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("tag_daily_day", "tag_daily", ["day"])
    op.create_index("manifest_daily_day", "manifest_daily", ["day"])


def downgrade() -> None:
    op.drop_index("manifest_daily_day", "manifest_daily")
    op.drop_index("tag_daily_day", "tag_daily")
