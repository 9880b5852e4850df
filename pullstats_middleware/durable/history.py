"""Daily pull counts over a range of UTC days: SQL's rows plus what the store still
holds for those days (live, and claimed but not yet committed), read as the
totals are (see reads.py), zero-filled."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from pullstats_middleware.durable.database import Database
from pullstats_middleware.durable.schema import manifest_daily, tag_daily
from pullstats_middleware.store.pending import ClaimStore, RecordKey


def daily(
    store: ClaimStore, database: Database, key: RecordKey, start: dt.date, end: dt.date
) -> list[tuple[str, int]]:
    first, last = start.isoformat(), end.isoformat()
    pending = store.pending([key])
    table = tag_daily if key.kind == "tag" else manifest_daily
    name = table.c.tag if key.kind == "tag" else table.c.digest
    with database.snapshot() as connection:
        rows = connection.execute(
            select(table.c.day, table.c.pull_count).where(
                table.c.repository == key.repository,
                name == key.name,
                table.c.day >= first,
                table.c.day <= last,
            )
        )
        counts = {day: int(count) for day, count in rows}
        committed = database.committed(connection, pending.claims)
    parts = [pending.live.get(key)]
    parts += [d.get(key) for cid, d in pending.claims.items() if cid not in committed]
    for part in parts:
        for day, count in (part.days if part is not None else {}).items():
            if first <= day <= last:
                counts[day] = counts.get(day, 0) + count
    days = (start + dt.timedelta(days=n) for n in range((end - start).days + 1))
    return [(day.isoformat(), counts.get(day.isoformat(), 0)) for day in days]
