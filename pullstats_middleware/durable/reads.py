"""Real-time answers with a database: the SQL total plus what Redis still holds.

Redis is read first, in one atomic script (live hashes and every open claim);
then SQL, in one transaction (totals and which of those claims it has
committed). A claim SQL already has is not added again, and a claim committed
between the two reads is in the SQL total and seen as committed: nothing is
counted twice, nothing pulled is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from pullstats_middleware.durable.database import Database
from pullstats_middleware.store.pending import ClaimStore, Delta, RecordKey


class Merged(NamedTuple):
    pull_count: int
    last_pull_date: str | None
    current_manifest_digest: str | None
    last_push_date: str | None = None


def merged(store: ClaimStore, database: Database, keys: list[RecordKey]) -> dict[RecordKey, Merged]:
    pending = store.pending(keys)
    # Usually no claim is open: one statement, no snapshot isolation to ask for.
    kinds = {key.kind for key in keys}
    with database.snapshot(repeatable=bool(pending.claims) or len(kinds) > 1) as connection:
        totals = database.totals(connection, keys)
        committed = database.committed(connection, pending.claims)
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


def combine(parts: Iterable[Delta]) -> Merged:
    """Counts add up; dates are the latest; the digest is that of the record that last
    learned what the tag names (its latest pull or push)."""
    count, pulled, pushed, newest = 0, None, None, None
    for part in parts:
        count += part.pull_count
        pulled = max(pulled or "", part.last_pull_date or "") or None
        pushed = max(pushed or "", part.last_push_date or "") or None
        if part.latest and (newest is None or part.latest >= newest.latest):
            newest = part
    digest = newest.current_manifest_digest if newest is not None else None
    return Merged(count, pulled, digest, pushed)
