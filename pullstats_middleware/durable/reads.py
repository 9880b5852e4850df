"""Real-time answers with a database: the SQL total plus what Redis still holds.

Redis is read first, in one atomic script (live hashes, every open claim, and
how many claims were ever made); then SQL, in one snapshot (totals and which of
those claims it has committed). A claim SQL already has is not added again, and
a claim committed between the two reads is in the SQL total and seen as
committed. One case remains: a claim *made* after the Redis read and committed
before the SQL snapshot moves live values the reader holds into SQL, and both
would count them. The claim counter shows it: unchanged after the SQL read, no
such claim exists; changed while the reader holds live values, it reads again.
Nothing is counted twice, nothing pulled is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection

from pullstats_middleware.durable.database import Database
from pullstats_middleware.store.base import StoreUnavailable
from pullstats_middleware.store.pending import (
    ClaimStore,
    Delta,
    Merged,
    Pending,
    RecordKey,
    combine,
)

T = TypeVar("T")

# A flush claims a batch every few milliseconds at most, a read takes about one:
# five reads in a row each overtaken by a claim mean a worker gone wild.
TRIES = 5


def settled(store: ClaimStore, keys: list[RecordKey], pending: Pending) -> bool:
    """True unless a claim made since `pending` was read may have moved live values it
    holds into SQL; called once the SQL snapshot is taken (after its first statement)."""
    return not pending.live or store.claims_made(keys) == pending.made


def read_through(
    store: ClaimStore,
    database: Database,
    keys: list[RecordKey],
    read: Callable[[Connection, Pending], T],
    *,
    repeatable: Callable[[Pending], bool] = lambda _: True,
) -> tuple[Pending, T]:
    """The store's pending values of `keys`, then `read(connection, pending)` in one SQL
    snapshot; again while a claim overtook them (see the module's docstring)."""
    for _ in range(TRIES):
        pending = store.pending(keys)
        with database.snapshot(repeatable=repeatable(pending)) as connection:
            result = read(connection, pending)
        if settled(store, keys, pending):
            return pending, result
    raise StoreUnavailable(f"the flush worker claimed records during {TRIES} reads in a row")


def merged(
    store: ClaimStore, database: Database, keys: list[RecordKey], held: set[str] | None = None
) -> dict[RecordKey, Merged]:
    """`held`: when the caller knows them, the names the store holds a record of: only
    those are asked of it (a listing's thousands of flushed tags are not)."""
    asked = keys if held is None else [key for key in keys if key.name in held]

    def read(connection: Connection, pending: Pending) -> tuple[dict[RecordKey, Delta], set[str]]:
        return database.totals(connection, keys), database.committed(connection, pending.claims)

    # Usually no claim is open: one statement (totals), no transaction to ask for.
    pending, (totals, committed) = read_through(
        store, database, asked, read, repeatable=lambda p: bool(p.claims)
    )
    out = {}
    for key in keys:
        parts = [totals.get(key), pending.live.get(key)]
        parts += [
            deltas.get(key)
            for claim_id, deltas in pending.claims.items()
            if claim_id not in committed
        ]
        out[key] = combine(p for p in parts if p is not None)
    return out
