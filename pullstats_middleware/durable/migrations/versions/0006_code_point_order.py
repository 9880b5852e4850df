"""Names and dates compare by code point on PostgreSQL, as in Python and in SQLite.

The listing merges SQL's pages with what Redis holds and with the registry's
tag names, and pages by a cursor (tag name, value), all in Python's order: by
code point. A database created with an English locale sorts `a < A < a_b <
a-b < ab`, where Python sorts `A < a < a-b < a_b < ab`: its pages skipped and
repeated tags (tests/test_listing_pages.py, on an ICU en-US database). SQLite
compares text by its bytes (BINARY) already: nothing changes there.

`COLLATE "C"` is also the cheapest comparison PostgreSQL has (no locale
library call): the flush, whose upserts compare keys in four tables and their
indexes, writes about a tenth faster.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DATE = sa.String(20)
DIGEST = sa.String(135)
REPOSITORY = sa.String(255)
TAG = sa.String(128)
DAY = sa.String(10)

# table -> its text columns that are compared: keys, sort orders, dates.
COLUMNS = {
    "tag_pulls": {
        "repository": REPOSITORY,
        "tag": TAG,
        "last_pull_date": DATE,
        "last_push_date": DATE,
    },
    "manifest_pulls": {"repository": REPOSITORY, "digest": DIGEST, "last_pull_date": DATE},
    "tag_daily": {"repository": REPOSITORY, "tag": TAG, "day": DAY},
    "manifest_daily": {"repository": REPOSITORY, "digest": DIGEST, "day": DAY},
    "flush_claims": {"claim_id": sa.String(64)},
}


def upgrade() -> None:
    _collate("C")


def downgrade() -> None:
    _collate("default")


def _collate(collation: str) -> None:
    dialect = op.get_bind().dialect
    if dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        # One ALTER TABLE per table: its indexes are rebuilt once, the rows stay.
        changes = ", ".join(
            f'ALTER COLUMN {name} TYPE {kind.compile(dialect=dialect)} COLLATE "{collation}"'
            for name, kind in columns.items()
        )
        op.execute(f"ALTER TABLE {table} {changes}")
