"""Real-time answers with a database: the SQL total plus what Redis still holds.

Redis is read first, in one atomic script (live hashes and every open claim);
then SQL, in one transaction (totals and which of those claims it has
committed). A claim SQL already has is not added again, and a claim committed
between the two reads is in the SQL total and seen as committed: nothing is
counted twice, nothing pulled is missing.
"""

from __future__ import annotations

from pullstats_middleware.durable.database import Database
from pullstats_middleware.store.pending import ClaimStore, Merged, RecordKey, combine


def merged(
    store: ClaimStore, database: Database, keys: list[RecordKey], held: set[str] | None = None
) -> dict[RecordKey, Merged]:
    """`held`: when the caller knows them, the names the store holds a record of: only
    those are asked of it (a listing's thousands of flushed tags are not)."""
    asked = keys if held is None else [key for key in keys if key.name in held]
    pending = store.pending(asked)
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
