"""Every row of the durable store, streamed: what `pullstats export` writes.

The rows come from one read transaction through a server-side cursor (PostgreSQL;
SQLite's cursor steps its statement as rows are fetched), `yield_per` at a time,
so memory stays flat whatever the table's size. With a `store`, what Redis still
holds is read first (`read_pending`) and each row merged as the statistics routes
merge it (reads.py): SQL, plus the live records, plus the claims SQL has not
committed. Those extra records are held in memory: as many as Redis holds
unflushed, not the table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import Connection, Select, String, func, literal_column, select

from pullstats_middleware.durable.database import Database
from pullstats_middleware.durable.hyperloglog import Sketch
from pullstats_middleware.durable.reads import TRIES, settled
from pullstats_middleware.durable.schema import manifest_daily, manifest_pulls, tag_daily, tag_pulls
from pullstats_middleware.durable.writes import sketch
from pullstats_middleware.store import RedisClusterStore, RedisStore, StoreUnavailable
from pullstats_middleware.store.pending import Delta, Pending, RecordKey, combine

KINDS = ("tags", "manifests", "history")
COLUMNS: dict[str, tuple[str, ...]] = {
    "tags": (
        "repository",
        "tag_name",
        "tag_pull_count",
        "last_tag_pull_date",
        "current_manifest_digest",
        "last_push_date",
    ),
    "manifests": (
        "repository",
        "manifest_digest",
        "manifest_pull_count",
        "last_manifest_pull_date",
    ),
    "history": ("repository", "kind", "name", "date", "pull_count", "unique_pullers"),
}
RECORD_KINDS = {"tags": ("tag",), "manifests": ("manifest",), "history": ("tag", "manifest")}


@dataclass(frozen=True)
class Selection:
    """Which rows: a kind, one repository or all (None), and UTC days, inclusive."""

    kind: str
    repository: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None

    def pulled_in_range(self, date: str | None) -> bool:
        """Tags and manifests: whether a last pull date is in the range."""
        if self.since is None and self.until is None:
            return True
        day = (date or "")[:10]
        return (
            bool(day)
            and (self.since is None or self.since.isoformat() <= day)
            and (self.until is None or day <= self.until.isoformat())
        )


def _queries(selection: Selection) -> list[tuple[str, Select[Any]]]:
    """(record kind, query) for each table the selection reads, in primary-key order."""
    since, until = selection.since, selection.until
    out = []
    for kind in RECORD_KINDS[selection.kind]:
        if selection.kind == "history":
            table = tag_daily if kind == "tag" else manifest_daily
            name = table.c.tag if kind == "tag" else table.c.digest
            label = literal_column(f"'{kind}'", String).label("kind")
            query = select(
                table.c.repository, label, name, table.c.day, table.c.pull_count, table.c.pullers
            )
            query = query.order_by(table.c.repository, name, table.c.day)
            if since is not None:
                query = query.where(table.c.day >= since.isoformat())
            if until is not None:
                query = query.where(table.c.day <= until.isoformat())
        else:
            table = tag_pulls if kind == "tag" else manifest_pulls
            query = select(*table.c).order_by(*table.primary_key.columns)
            # Dates are fixed-width ISO text: text order is time order.
            if since is not None:
                query = query.where(table.c.last_pull_date >= f"{since}T00:00:00Z")
            if until is not None:
                after = until + dt.timedelta(days=1)
                query = query.where(table.c.last_pull_date < f"{after}T00:00:00Z")
        if selection.repository is not None:
            query = query.where(table.c.repository == selection.repository)
        out.append((kind, query))
    return out


def count(database: Database, selection: Selection) -> int:
    """How many rows SQL has for the selection (the progress bar's total)."""
    with database.snapshot(repeatable=False) as connection:
        return sum(
            int(connection.execute(select(func.count()).select_from(q.subquery())).scalar_one())
            for q in (query.order_by(None) for _, query in _queries(selection))  # no sort to count
        )


def rows(
    database: Database,
    selection: Selection,
    store: RedisStore | RedisClusterStore | None = None,
    *,
    yield_per: int = 5000,
) -> Generator[Sequence[Any], None, None]:
    """The selection's rows, in `COLUMNS[selection.kind]` order: SQL's in primary-key
    order, each merged with what `store` holds of it; then, per table, the records
    only the store holds, sorted."""
    for _ in range(TRIES):
        keys, pending = read_pending(store, selection) if store is not None else ([], None)
        with database.snapshot() as connection:
            claims = pending.claims if pending is not None else {}
            # This statement fixes the snapshot; then the claim counter is compared.
            committed = database.committed(connection, claims, fix_snapshot=True)
            if pending is not None and store is not None and not settled(store, keys, pending):
                continue  # nothing yielded yet: read both again
            unflushed = _unflushed(pending, committed) if pending is not None else {}
            yield from _stream(database, connection, selection, unflushed, yield_per)
            return
    raise StoreUnavailable(f"the flush worker claimed records during {TRIES} reads in a row")


def _stream(
    database: Database,
    connection: Connection,
    selection: Selection,
    unflushed: dict[str, Held],
    yield_per: int,
) -> Iterator[Sequence[Any]]:
    """The selection's rows from one snapshot, merged with `unflushed`."""
    stream = connection.execution_options(stream_results=True, yield_per=yield_per)
    for kind, query in _queries(selection):
        held = unflushed.get(kind, {})
        result = stream.execute(query)
        if selection.kind == "history":  # the sketch of pullers becomes its estimate
            days, seen = _days(held, selection), _pullers(held, selection)
            for row in result:
                day = (row[0], row[2], row[3])
                extra, more = days.pop(day, 0), seen.pop(day, ())
                pullers = sketch(row[5], (kind, *day)).update(more).estimate()
                yield (*row[:4], row[4] + extra, pullers)
            for (r, n, d), c in sorted(days.items()):
                yield r, kind, n, d, c, Sketch().update(seen.get((r, n, d), ())).estimate()
            continue
        if not held:  # the usual case right after a flush: rows as they come
            yield from result
            continue
        for row in result:
            parts = held.pop((row[0], row[1]), None)
            if parts is None:
                yield row
                continue
            merged = _merge(kind, row[0], row[1], [_delta(kind, row), *parts])
            if selection.pulled_in_range(merged[3]):
                yield merged
        # Records SQL did not return: new, or (with dates) filtered out before merging.
        keys = [RecordKey(kind, r, n) for r, n in sorted(held)]
        known = database.totals(connection, keys) if selection.since or selection.until else {}
        for key in keys:
            own = known.get(key)
            parts = [*([own] if own else []), *held[key.repository, key.name]]
            merged = _merge(kind, key.repository, key.name, parts)
            if selection.pulled_in_range(merged[3]):
                yield merged


Held = dict[tuple[str, str], list[Delta]]


def _unflushed(pending: Pending, committed: set[str]) -> dict[str, Held]:
    """Per record kind, (repository, name) -> the parts SQL does not have."""
    out: dict[str, Held] = {}
    parts = [pending.live, *(d for cid, d in pending.claims.items() if cid not in committed)]
    for deltas in parts:
        for key, delta in deltas.items():
            out.setdefault(key.kind, {}).setdefault((key.repository, key.name), []).append(delta)
    return out


def _days(held: Held, selection: Selection) -> dict[tuple[str, str, str], int]:
    since = selection.since.isoformat() if selection.since else ""
    until = selection.until.isoformat() if selection.until else "9999-12-31"
    out: dict[tuple[str, str, str], int] = {}
    for (repository, name), parts in held.items():
        for part in parts:
            for day, pulls in part.days.items():
                if since <= day <= until and pulls:
                    out[repository, name, day] = out.get((repository, name, day), 0) + pulls
    return out


def _pullers(held: Held, selection: Selection) -> dict[tuple[str, str, str], set[str]]:
    since = selection.since.isoformat() if selection.since else ""
    until = selection.until.isoformat() if selection.until else "9999-12-31"
    out: dict[tuple[str, str, str], set[str]] = {}
    for (repository, name), parts in held.items():
        for part in parts:
            for day, pullers in part.pullers.items():
                if since <= day <= until:
                    out.setdefault((repository, name, day), set()).update(pullers)
    return out


def _delta(kind: str, row: Sequence[Any]) -> Delta:
    key = RecordKey(kind, row[0], row[1])
    if kind == "tag":
        return Delta(key, row[2], row[3], row[4], {}, row[5])
    return Delta(key, row[2], row[3])


def _merge(kind: str, repository: str, name: str, parts: list[Delta]) -> tuple[Any, ...]:
    merged = combine(parts)
    if kind == "tag":
        return (repository, name, merged.pull_count, merged.last_pull_date,
                merged.current_manifest_digest, merged.last_push_date)  # fmt: skip
    return repository, name, merged.pull_count, merged.last_pull_date


def read_pending(
    store: RedisStore | RedisClusterStore, selection: Selection, *, chunk: int = 1000
) -> tuple[list[RecordKey], Pending]:
    """The keys of the selection's records Redis holds, and what it holds of them, read
    first (before SQL) as the routes read it: `pending.lua`, atomic per key, `chunk`
    keys a call so Redis is never blocked long; the claim counter as the first call
    saw it. An export of one repository scans only that repository's keys."""
    keys = sorted(_held_keys(store, RECORD_KINDS[selection.kind], selection.repository))
    live: dict[RecordKey, Delta] = {}
    claims: dict[str, dict[RecordKey, Delta]] = {}
    made: object = None
    for start in range(0, len(keys), chunk):
        part = store.pending(keys[start : start + chunk])
        made = part.made if start == 0 else made
        live.update(part.live)
        for claim_id, deltas in part.claims.items():
            claims.setdefault(claim_id, {}).update(deltas)
    return keys, Pending(live, claims, made)


def _held_keys(
    store: RedisStore | RedisClusterStore, kinds: Iterable[str], repository: str | None
) -> set[RecordKey]:
    if repository is not None:
        return {RecordKey(k, repository, name) for k in kinds for name in store.held(k, repository)}
    if not isinstance(store, RedisStore):  # the command refuses it first, with a way out
        raise StoreUnavailable("every repository at once cannot be read from a Redis Cluster")
    heads = tuple(f"{store.prefix}/{kind}/" for kind in kinds)
    keys = set()
    try:
        for head in heads:
            for raw in store.client.scan_iter(match=_literal(head) + "*", count=1000):
                keys.add(store.record_key(_text(raw)))
        for raw in store.client.smembers(f"{store.prefix}/claims"):
            where = f"{store.prefix}/claim/{_text(raw)}"
            for field, _ in store.client.hscan_iter(where, count=1000):
                if _text(field).startswith(heads):
                    keys.add(store.record_key(_text(field)))
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return keys


def _literal(text: str) -> str:
    """`text` as a literal in a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
