"""Totals and daily counts per tag and per manifest; the flush worker's claim ids.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DATE = sa.String(20)
DIGEST = sa.String(135)


def upgrade() -> None:
    op.create_table(
        "tag_pulls",
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True),
        sa.Column("pull_count", sa.BigInteger, nullable=False),
        sa.Column("last_pull_date", DATE),
        sa.Column("current_manifest_digest", DIGEST),
    )
    op.create_table(
        "manifest_pulls",
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("digest", DIGEST, primary_key=True),
        sa.Column("pull_count", sa.BigInteger, nullable=False),
        sa.Column("last_pull_date", DATE),
    )
    op.create_table(
        "tag_daily",
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("pull_count", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "manifest_daily",
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("digest", DIGEST, primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("pull_count", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "flush_claims",
        sa.Column("claim_id", sa.String(64), primary_key=True),
        sa.Column("committed_at", DATE, nullable=False),
    )


def downgrade() -> None:
    for table in ("flush_claims", "manifest_daily", "tag_daily", "manifest_pulls", "tag_pulls"):
        op.drop_table(table)
