"""Indexes in the listing's orders (store/order.py, durable/listing.py): a page of
a repository's tags by last pull, pull count or last push reads its rows in
order from an index and stops after the page, instead of sorting every tag of
the repository (10,000 tags: 6 ms a page on PostgreSQL). A null date sorts as
'' (first ascending), so the index holds the same expression the query sorts by.
Descending pages read the index backwards (ties by name: PostgreSQL sorts
each run of equal values, SQLite the same).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = {
    "tag_pulls_by_last_pull": "coalesce(last_pull_date, '')",
    "tag_pulls_by_pull_count": "pull_count",
    "tag_pulls_by_last_push": "coalesce(last_push_date, '')",
}


def upgrade() -> None:
    for name, value in INDEXES.items():
        op.create_index(name, "tag_pulls", ["repository", sa.text(value), "tag"])


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "tag_pulls")
