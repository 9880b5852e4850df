"""The SQL tables, as SQLAlchemy Core sees them (the migrations create them).

Dates are ISO 8601 UTC text (`2024-09-08T10:15:00Z`, fixed width, so text order is
time order), days `YYYY-MM-DD`: the same on SQLite and PostgreSQL, and exactly
what the routes answer.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, MetaData, String, Table

metadata = MetaData()

DATE = String(20)
DIGEST = String(135)

tag_pulls = Table(
    "tag_pulls",
    metadata,
    Column("repository", String(255), primary_key=True),
    Column("tag", String(128), primary_key=True),
    Column("pull_count", BigInteger, nullable=False),
    Column("last_pull_date", DATE),
    Column("current_manifest_digest", DIGEST),
    Column("last_push_date", DATE),
)

manifest_pulls = Table(
    "manifest_pulls",
    metadata,
    Column("repository", String(255), primary_key=True),
    Column("digest", DIGEST, primary_key=True),
    Column("pull_count", BigInteger, nullable=False),
    Column("last_pull_date", DATE),
)

tag_daily = Table(
    "tag_daily",
    metadata,
    Column("repository", String(255), primary_key=True),
    Column("tag", String(128), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("pull_count", BigInteger, nullable=False),
    Column("pullers", LargeBinary),  # who pulled that day: a HyperLogLog sketch
    Index("tag_daily_day", "day"),  # PULL_METRICS_HISTORY_DAYS: old days are deleted
)

manifest_daily = Table(
    "manifest_daily",
    metadata,
    Column("repository", String(255), primary_key=True),
    Column("digest", DIGEST, primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("pull_count", BigInteger, nullable=False),
    Column("pullers", LargeBinary),
    Index("manifest_daily_day", "day"),
)

# One row per claim the flush worker committed: a claim is written once, whatever
# is killed when (the insert of its id is part of the same transaction).
flush_claims = Table(
    "flush_claims",
    metadata,
    Column("claim_id", String(64), primary_key=True),
    Column("committed_at", DATE, nullable=False),
)
