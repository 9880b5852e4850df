"""A repository's tags as listing rows: all of them, or one page in an order.

With a database, SQL sorts and cuts the page (durable/listing.py) and only the
tags the store still holds (pulled since the last flush: few) are merged in
Python: each held tag's true value replaces its SQL row, wherever that puts it.
SQL is asked for `limit + 1 + len(held)` rows, so even when every held tag was
among them, `limit + 1` others remain: a row SQL left out sorts after all of
those, so it cannot belong on the page. Tags only the registry lists (never
pulled) join with zero counts and null dates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pullstats_middleware.store.order import TagOrder
from pullstats_middleware.store.pending import ClaimStore, Merged, RecordKey, combine

if TYPE_CHECKING:  # the [sql] extra: imported only with a database configured
    from pullstats_middleware.durable import Database


def read_many(
    store: ClaimStore, database: Database | None, keys: list[RecordKey], held: set[str] | None
) -> dict[RecordKey, Merged]:
    """Many records at once; `held`, when known: the names the store holds a record
    of (only those are asked of it)."""
    if database is not None:
        from pullstats_middleware.durable import merged

        return merged(store, database, keys, held)
    asked = keys if held is None else [key for key in keys if key.name in held]
    live = store.pending(asked).live  # one read for all, in Redis one script
    return {key: combine([live[key]] if key in live else []) for key in keys}


def all_rows(
    store: ClaimStore, database: Database | None, repository: str, also: Iterable[str]
) -> list[dict[str, Any]]:
    """Every tag the store or the database knows, and those in `also`."""
    held = store.held("tag", repository)
    names = set(also) | held
    if database is not None:
        with database.snapshot(repeatable=False) as connection:
            names |= database.tag_names(connection, repository)
    keys = [RecordKey("tag", repository, name) for name in sorted(names)]
    return _rows(store, database, repository, read_many(store, database, keys, held))


def page(
    store: ClaimStore,
    database: Database | None,
    repository: str,
    registry: list[str],
    order: TagOrder,
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    """The first `limit` rows in `order`, and whether more follow."""
    if database is None:
        rows = [row for row in all_rows(store, None, repository, registry) if order.keeps(row)]
        order.sort(rows)
        return rows[:limit], len(rows) > limit
    records, manifests = _candidates(store, database, repository, registry, order, limit)
    rows = _rows(store, database, repository, records, bare=True)
    rows = [row for row in rows if order.keeps(row)]
    order.sort(rows)
    shown = {RecordKey("tag", repository, row["tag_name"]): None for row in rows[:limit]}
    full = _rows(store, database, repository, {key: records[key] for key in shown}, manifests)
    return full, len(rows) > limit


def _candidates(
    store: ClaimStore,
    database: Database,
    repository: str,
    registry: list[str],
    order: TagOrder,
    limit: int,
) -> tuple[dict[RecordKey, Merged], dict[RecordKey, Merged]]:
    """SQL's page, what the store holds, and the tags only the registry lists; and,
    read along with the held tags, the manifests SQL's page names (those of the
    rows shown, but for a held tag that now names another: `_rows` reads it)."""
    from pullstats_middleware.durable.listing import known_tags, tag_page

    held = store.held("tag", repository)
    with database.snapshot(repeatable=False) as connection:
        paged = tag_page(connection, repository, order, limit + 1 + len(held))
        unknown = set(registry) - held - {delta.key.name for delta in paged}
        unknown -= known_tags(connection, repository, list(unknown))
    records = {delta.key: combine([delta]) for delta in paged if delta.key.name not in held}
    held_keys = [RecordKey("tag", repository, name) for name in sorted(held)]
    # A row after the first `limit` SQL rows the store does not hold is never shown.
    shown = [delta for delta in paged if delta.key.name not in held][:limit]
    digests = {d.current_manifest_digest for d in shown if d.current_manifest_digest}
    manifest_keys = [RecordKey("manifest", repository, digest) for digest in sorted(digests)]
    # One read for both kinds (tag names never hold a ':', digests always do).
    held |= store.held("manifest", repository)
    both = read_many(store, database, held_keys + manifest_keys, held)
    records.update((key, both[key]) for key in held_keys)
    records.update({RecordKey("tag", repository, name): combine([]) for name in unknown})
    return records, {key: both[key] for key in manifest_keys}


def _rows(
    store: ClaimStore,
    database: Database | None,
    repository: str,
    tags: dict[RecordKey, Merged],
    known: dict[RecordKey, Merged] | None = None,
    *,
    bare: bool = False,
) -> list[dict[str, Any]]:
    """Listing rows: the seed's six tag fields and `last_push_date`. `known`: manifests
    read already. `bare`: without reading the manifests (their fields left empty),
    for rows that only sort."""
    manifests = dict(known or {})
    digests = {m.current_manifest_digest for m in tags.values() if m.current_manifest_digest}
    keys = [RecordKey("manifest", repository, d) for d in sorted(digests)]
    keys = [key for key in keys if key not in manifests]
    if keys and not bare:
        manifests.update(read_many(store, database, keys, store.held("manifest", repository)))
    rows = []
    for key, tag in tags.items():
        digest = tag.current_manifest_digest
        manifest = manifests.get(RecordKey("manifest", repository, digest)) if digest else None
        rows.append(
            {
                "tag_name": key.name,
                "tag_pull_count": tag.pull_count,
                "last_tag_pull_date": tag.last_pull_date,
                "current_manifest_digest": digest,
                "manifest_pull_count": manifest.pull_count if manifest else 0,
                "last_manifest_pull_date": manifest.last_pull_date if manifest else None,
                "last_push_date": tag.last_push_date,
            }
        )
    return rows
