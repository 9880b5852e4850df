"""Daily pull counts and unique pullers over a range of UTC days: SQL's rows plus what
the store still holds for those days (live, and claimed but not yet committed),
read as the totals are (see reads.py), zero-filled."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import select

from pullstats_middleware.durable.database import Database
from pullstats_middleware.durable.hyperloglog import Sketch
from pullstats_middleware.durable.schema import manifest_daily, tag_daily
from pullstats_middleware.durable.writes import sketch
from pullstats_middleware.store.pending import ClaimStore, RecordKey


class Day(NamedTuple):
    date: str  # YYYY-MM-DD
    pull_count: int
    unique_pullers: int


class History(NamedTuple):
    days: list[Day]
    unique_pullers: int  # over the whole range: one puller on many days counts once


def daily(
    store: ClaimStore, database: Database, key: RecordKey, start: dt.date, end: dt.date
) -> History:
    first, last = start.isoformat(), end.isoformat()
    pending = store.pending([key])
    table = tag_daily if key.kind == "tag" else manifest_daily
    name = table.c.tag if key.kind == "tag" else table.c.digest
    counts: dict[str, int] = {}
    sketches: dict[str, Sketch] = {}
    with database.snapshot() as connection:
        rows = connection.execute(
            select(table.c.day, table.c.pull_count, table.c.pullers).where(
                table.c.repository == key.repository,
                name == key.name,
                table.c.day >= first,
                table.c.day <= last,
            )
        )
        for day, count, blob in rows:
            counts[day] = int(count)
            sketches[day] = sketch(blob, (*key, day))
        committed = database.committed(connection, pending.claims)
    parts = [pending.live.get(key)]
    parts += [d.get(key) for cid, d in pending.claims.items() if cid not in committed]
    for part in parts:
        if part is None:
            continue
        for day, count in part.days.items():
            if first <= day <= last:
                counts[day] = counts.get(day, 0) + count
        for day, pullers in part.pullers.items():
            if first <= day <= last:
                sketches.setdefault(day, Sketch()).update(pullers)
    overall = Sketch()
    for one in sketches.values():
        overall.merge(one)
    days = [(start + dt.timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]
    return History(
        [Day(day, counts.get(day, 0), _estimate(sketches.get(day))) for day in days],
        overall.estimate(),
    )


def _estimate(one: Sketch | None) -> int:
    return 0 if one is None else one.estimate()
