"""The flush worker's write: a claim's deltas added to SQL in the caller's transaction.

One statement shape serves SQLite and PostgreSQL: an upsert (`INSERT … ON
CONFLICT DO UPDATE`) per table, executed for all rows of a claim. On
PostgreSQL the rows first travel by COPY into a temporary table of the
session (psycopg formats COPY rows in C; the arrays of parameters used before
were built in Python, about a quarter of a flush cycle in a profile), and one
upsert reads them from there. Each day row's sketch of pullers (HyperLogLog)
goes in with the row's upsert; on PostgreSQL a stored sketch is merged after
it and written back only when it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, case, func, select, tuple_
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.dialects import postgresql, sqlite

from pullstats_middleware.durable.hyperloglog import Sketch
from pullstats_middleware.durable.schema import manifest_daily, manifest_pulls, tag_daily, tag_pulls
from pullstats_middleware.store.base import StoreDataError
from pullstats_middleware.store.pending import Delta

log = logging.getLogger("pullstats_middleware")

_IN_LIST_MAX = 500  # rows asked by value per statement


Found = dict[tuple[str, str, str], frozenset[str]]  # day row -> puller hashes


def add(connection: Connection, dialect: str, deltas: Iterable[Delta]) -> None:
    """Add a claim's deltas: totals, days, and who pulled each day."""
    tables, pullers = table_rows(deltas)
    for table, rows in tables:
        if rows and dialect == "postgresql":
            _add_postgresql(connection, table, rows, pullers.get(table))
        elif rows:
            _add_sqlite(connection, table, rows, pullers.get(table))


def _add_postgresql(
    connection: Connection, table: Table, rows: list[tuple[Any, ...]], found: Found | None
) -> None:
    """The upsert reads the staged rows in key order: two workers upserting the same
    rows lock them in the same order, so PostgreSQL never sees a deadlock. (Sorting
    them here as well cost a sixth of the write.)

    A day row's sketch of who pulled: a new row is inserted with the sketch of its
    own pullers; the upsert leaves a stored sketch as it is and returns it, read
    under the row's lock; only a sketch the merge changes is written back (a puller
    seen again that day changes none)."""
    names = ROW_COLUMNS[table]
    if not found:
        connection.execute(_staged_upsert(connection, table, names, rows))
        return
    own = {key: Sketch().update(hashes) for key, hashes in found.items()}
    blobs = {key: sketch.to_bytes() for key, sketch in own.items()}
    rows = [(*row, blobs.get(row[:3])) for row in rows]
    upsert = _staged_upsert(connection, table, (*names, "pullers"), rows)
    returned = connection.execute(upsert.returning(*table.primary_key.columns, table.c.pullers))
    changed = []
    for repository, name, day, stored in returned.all():
        key = (repository, name, day)
        blob = blobs.get(key)
        if blob is None or stored == blob:
            continue  # none of ours, or inserted with ours
        merged = _stored(stored, key).merge(own[key]).to_bytes()
        if merged != stored:
            changed.append((repository, name, day, 0, merged))
    if changed:  # staged too, then one UPDATE … FROM
        staged = _stage(connection, table, [c.name for c in table.c], changed).c
        key_column = table.c.tag if table is tag_daily else table.c.digest
        where = (table.c.repository == staged[0], key_column == staged[1], table.c.day == staged[2])
        connection.execute(table.update().where(*where).values(pullers=staged[4]))


def _add_sqlite(
    connection: Connection, table: Table, rows: list[tuple[Any, ...]], found: Found | None
) -> None:
    """SQLite locks the whole file, so no order is needed against deadlocks; in key
    order, the rows land in B-tree pages one after another. The transaction holds
    that lock already (the claim id went in first): the stored sketches are read and
    merged here, and go in with the upsert itself."""
    names = ROW_COLUMNS[table]
    rows.sort(key=itemgetter(*range(len(table.primary_key.columns))))
    if found:
        stored = _sketches(connection, table, found)
        blobs = {
            key: _stored(stored.get(key), key).update(hashes).to_bytes()
            for key, hashes in found.items()
        }
        names = (*names, "pullers")
        rows = [(*row, blobs.get(row[:3])) for row in rows]
    parameters = [dict(zip(names, row, strict=True)) for row in rows]
    connection.execute(upsert_statement("sqlite", table, pullers=bool(found)), parameters)


# The columns of the rows table_rows() makes for each table, primary key first.
ROW_COLUMNS: dict[Table, tuple[str, ...]] = {
    tag_pulls: (
        "repository",
        "tag",
        "pull_count",
        "last_pull_date",
        "current_manifest_digest",
        "last_push_date",
    ),
    manifest_pulls: ("repository", "digest", "pull_count", "last_pull_date"),
    tag_daily: ("repository", "tag", "day", "pull_count"),
    manifest_daily: ("repository", "digest", "day", "pull_count"),
}


def table_rows(
    deltas: Iterable[Delta],
) -> tuple[list[tuple[Table, list[tuple[Any, ...]]]], dict[Table, Found]]:
    """The rows the deltas add to each table (as tuples of its ROW_COLUMNS), and who
    pulled on each day row. Tuples, not dicts: PostgreSQL's COPY takes them as they
    are, and a flush builds two rows for every record it moves."""
    tags: list[tuple[Any, ...]] = []
    manifests: list[tuple[Any, ...]] = []
    tag_days: list[tuple[Any, ...]] = []
    manifest_days: list[tuple[Any, ...]] = []
    pullers: dict[Table, Found] = {}
    for delta in deltas:
        kind, repository, name = delta.key
        if kind == "tag":
            tags.append(
                (
                    repository,
                    name,
                    delta.pull_count,
                    delta.last_pull_date,
                    delta.current_manifest_digest,
                    delta.last_push_date,
                )
            )
            days, daily = tag_days, tag_daily
        else:
            manifests.append((repository, name, delta.pull_count, delta.last_pull_date))
            days, daily = manifest_days, manifest_daily
        days.extend((repository, name, day, count) for day, count in delta.days.items())
        if delta.pullers:
            seen = pullers.setdefault(daily, {})
            for day, hashes in delta.pullers.items():
                seen[(repository, name, day)] = hashes
    tables = [
        (tag_pulls, tags),
        (manifest_pulls, manifests),
        (tag_daily, tag_days),
        (manifest_daily, manifest_days),
    ]
    return tables, pullers


def _sketches(connection: Connection, table: Table, found: Found) -> dict[tuple[Any, ...], Any]:
    """The stored sketches of the day rows in `found` (SQLite: the one writer)."""
    name = table.c.tag if table is tag_daily else table.c.digest
    stored: dict[tuple[Any, ...], Any] = {}
    keys = sorted(found)
    for start in range(0, len(keys), _IN_LIST_MAX):
        chunk = keys[start : start + _IN_LIST_MAX]
        query = select(table.c.repository, name, table.c.day, table.c.pullers).where(
            tuple_(table.c.repository, name, table.c.day).in_(chunk)
        )
        stored.update({tuple(row[:3]): row[3] for row in connection.execute(query)})
    return stored


def _staged_upsert(
    connection: Connection, table: Table, names: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> Any:
    """PostgreSQL: `rows` (of columns `names`) staged, and the upsert that reads them in
    key order."""
    staged = _stage(connection, table, list(names), rows)
    in_key_order = select(*staged.c).order_by(*list(staged.c)[: len(table.primary_key.columns)])
    return upsert_statement("postgresql", table, in_key_order, list(names))


def _stage(
    connection: Connection,
    table: Table,
    names: list[str],
    rows: list[tuple[Any, ...]],
) -> Any:
    """PostgreSQL: `rows` (of columns `names`) copied into the session's staging table
    of `table`, emptied first (it may hold rows staged earlier in this transaction;
    a commit empties it too). The table is made in this transaction if the session
    has none (a rolled-back one takes it away again)."""
    stage = f"pullstats_stage_{table.name}"
    driver = connection.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        like = f"(LIKE {table.name}) ON COMMIT DELETE ROWS"
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} {like}")
        cursor.execute(f"DELETE FROM {stage}")
        with cursor.copy(f"COPY {stage} ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return sql_table(stage, *(sql_column(name) for name in names))


def upsert_statement(
    dialect: str,
    table: Table,
    source: Any = None,
    names: list[str] | None = None,
    *,
    pullers: bool = False,
) -> Any:
    """`INSERT … ON CONFLICT DO UPDATE` adding counts and keeping the later date; with
    a `source` (a SELECT of `names`), its rows come from there. A row's `pullers` go
    in with a new row only, unless `pullers`: then a sketch given (merged already)
    replaces the stored one."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    if source is not None:
        insert = insert.from_select(names, source)
    new, old = insert.excluded, table.c
    updates: dict[str, Any] = {"pull_count": old.pull_count + new.pull_count}
    if "last_pull_date" in old:
        later = old.last_pull_date.is_(None) | (new.last_pull_date >= old.last_pull_date)
        updates["last_pull_date"] = case((later, new.last_pull_date), else_=old.last_pull_date)
    if "last_push_date" in old:
        pushed = old.last_push_date.is_(None) | (new.last_push_date >= old.last_push_date)
        updates["last_push_date"] = case((pushed, new.last_push_date), else_=old.last_push_date)

        # The digest of whichever learned last what the tag names: a pull or a push.
        def latest(c: Any) -> Any:
            pull, push = (
                func.coalesce(c.last_pull_date, ""),
                func.coalesce(c.last_push_date, ""),
            )
            return case((pull >= push, pull), else_=push)

        updates["current_manifest_digest"] = case(
            (latest(new) >= latest(old), new.current_manifest_digest),
            else_=old.current_manifest_digest,
        )
    if pullers:
        updates["pullers"] = func.coalesce(new.pullers, old.pullers)
    keys = [column.name for column in table.primary_key.columns]
    return insert.on_conflict_do_update(index_elements=keys, set_=updates)


def sketch(blob: bytes | None, where: object) -> Sketch:
    """A stored sketch of pullers; StoreDataError naming the row when it is not one."""
    try:
        return Sketch.from_bytes(blob)
    except ValueError as exc:
        raise StoreDataError(f"the pullers of {where!r} in SQL: {exc}") from None


def _stored(blob: bytes | None, where: object) -> Sketch:
    # A flush must not stall on one damaged value: it starts that day's sketch anew.
    try:
        return sketch(blob, where)
    except StoreDataError as exc:
        log.warning("pull statistics: %s; that day's unique pullers start again", exc)
        return Sketch()
