"""Daily pull counts and unique pullers over a range of UTC days: SQL's rows plus what
the store still holds for those days (live, and claimed but not yet committed),
read as the totals are (see reads.py), zero-filled.

Of one tag or manifest (`daily`), or of a whole repository (`repository_daily`): a
pull is a manifest GET (docs/design.md, "What counts as a pull"), so a repository's
pulls of a day are its manifests' pulls of that day, and its pullers the union of
theirs; its pulls by tag are its tags' pulls.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import Connection, func, select

from pullstats_middleware.durable.database import Database
from pullstats_middleware.durable.hyperloglog import Sketch
from pullstats_middleware.durable.reads import read_through
from pullstats_middleware.durable.schema import manifest_daily, tag_daily
from pullstats_middleware.durable.writes import sketch
from pullstats_middleware.store.pending import ClaimStore, Delta, Pending, RecordKey


class Day(NamedTuple):
    date: str  # YYYY-MM-DD
    pull_count: int
    unique_pullers: int


class History(NamedTuple):
    days: list[Day]
    unique_pullers: int  # over the whole range: one puller on many days counts once


class RepositoryDay(NamedTuple):
    date: str
    pull_count: int  # manifest GETs: every pull, by tag or by digest
    tag_pull_count: int  # of those, pulls by tag
    unique_pullers: int


class RepositoryHistory(NamedTuple):
    days: list[RepositoryDay]
    unique_pullers: int


class _Days:
    """Counts and sketches per day of `start`..`end`, added up from SQL and the store."""

    def __init__(self, start: dt.date, end: dt.date) -> None:
        count = (end - start).days + 1
        self.dates = [(start + dt.timedelta(days=n)).isoformat() for n in range(count)]
        self.first, self.last = self.dates[0], self.dates[-1]
        self.counts: dict[str, int] = {}
        self.sketches: dict[str, Sketch] = {}

    def add_row(self, day: str, count: int, blob: bytes | None, where: object) -> None:
        self.counts[day] = self.counts.get(day, 0) + int(count)
        if blob:
            one, mine = sketch(blob, where), self.sketches.get(day)
            self.sketches[day] = one if mine is None else mine.merge(one)

    def add_parts(self, parts: Iterable[Delta | None]) -> None:
        for part in parts:
            if part is None:
                continue
            for day, count in part.days.items():
                if self.first <= day <= self.last:
                    self.counts[day] = self.counts.get(day, 0) + count
            for day, pullers in part.pullers.items():
                if self.first <= day <= self.last:
                    self.sketches.setdefault(day, Sketch()).update(pullers)

    def pullers(self, day: str) -> int:
        one = self.sketches.get(day)
        return 0 if one is None else one.estimate()

    def overall(self) -> int:
        union = Sketch()
        for one in self.sketches.values():
            union.merge(one)
        return union.estimate()


def _unflushed(pending: Pending, committed: set[str], key: RecordKey) -> list[Delta | None]:
    """What the store holds of `key` that SQL has not: live, and claims not committed."""
    parts = [pending.live.get(key)]
    return parts + [d.get(key) for cid, d in pending.claims.items() if cid not in committed]


def daily(
    store: ClaimStore, database: Database, key: RecordKey, start: dt.date, end: dt.date
) -> History:
    table = tag_daily if key.kind == "tag" else manifest_daily
    name = table.c.tag if key.kind == "tag" else table.c.digest

    def read(connection: Connection, pending: Pending) -> tuple[_Days, set[str]]:
        days = _Days(start, end)
        rows = connection.execute(
            select(table.c.day, table.c.pull_count, table.c.pullers).where(
                table.c.repository == key.repository,
                name == key.name,
                table.c.day >= days.first,
                table.c.day <= days.last,
            )
        )
        for day, count, blob in rows:
            days.add_row(day, count, blob, (*key, day))
        return days, database.committed(connection, pending.claims)

    pending, (days, committed) = read_through(store, database, [key], read)
    days.add_parts(_unflushed(pending, committed, key))
    return History(
        [Day(day, days.counts.get(day, 0), days.pullers(day)) for day in days.dates],
        days.overall(),
    )


def repository_daily(
    store: ClaimStore, database: Database, repository: str, start: dt.date, end: dt.date
) -> RepositoryHistory:
    """Only the records the store holds are asked of it (pulled since the last flush);
    SQL sums the tags' days itself, and hands over the manifests' days with their
    sketches, merged here."""
    manifests = [
        RecordKey("manifest", repository, n) for n in sorted(store.held("manifest", repository))
    ]
    tags = [RecordKey("tag", repository, n) for n in sorted(store.held("tag", repository))]
    m, t = manifest_daily.c, tag_daily.c

    def read(connection: Connection, pending: Pending) -> tuple[_Days, _Days, set[str]]:
        pulls, by_tag = _Days(start, end), _Days(start, end)
        rows = connection.execute(
            select(m.digest, m.day, m.pull_count, m.pullers).where(
                m.repository == repository, m.day >= pulls.first, m.day <= pulls.last
            )
        )
        for digest, day, count, blob in rows:
            pulls.add_row(day, count, blob, ("manifest", repository, digest, day))
        sums = connection.execute(
            select(t.day, func.sum(t.pull_count))
            .where(t.repository == repository, t.day >= pulls.first, t.day <= pulls.last)
            .group_by(t.day)
        )
        for day, count in sums:
            by_tag.add_row(day, count, None, None)
        return pulls, by_tag, database.committed(connection, pending.claims)

    pending, (pulls, by_tag, committed) = read_through(store, database, manifests + tags, read)
    for key in manifests:
        pulls.add_parts(_unflushed(pending, committed, key))
    for key in tags:
        by_tag.add_parts(_unflushed(pending, committed, key))
    return RepositoryHistory(
        [
            RepositoryDay(
                day, pulls.counts.get(day, 0), by_tag.counts.get(day, 0), pulls.pullers(day)
            )
            for day in pulls.dates
        ],
        pulls.overall(),
    )
