"""The embedded default store: process memory, same semantics as Redis.

For a single process and for trying the product out; counts are gone when
the process exits. Every rule here mirrors `apply_batch.lua` rule for rule,
and the store tests run both through the same cases.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pullstats_middleware.puller import puller_key
from pullstats_middleware.store.base import (
    NEVER_PULLED_MANIFEST,
    NEVER_PULLED_TAG,
    Batch,
    DigestFetch,
    ManifestRecord,
    Resolution,
    TagRecord,
    iso_date,
)
from pullstats_middleware.store.pairing import pairs
from pullstats_middleware.store.pending import Claim, Delta, Pending, RecordKey

_Key = tuple[str, str, str]
Clients = tuple[str, ...]  # raw identities; hashed here, as the Redis store does


class MemoryStore:
    def __init__(
        self,
        *,
        batch_ttl: float = 3600.0,
        index_ttl: float = 7 * 24 * 3600,
        durable: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._tags: dict[tuple[str, str], TagRecord] = {}
        self._manifests: dict[tuple[str, str], ManifestRecord] = {}
        self._applied: dict[str, float] = {}  # batch id -> expiry
        # Both expire window + skew after they were written, like Redis EX.
        # HEAD ts, origin, tag, index ("-": none), expiry / GET ts, origin, date, expiry
        self._resolutions: dict[_Key, tuple[float, str, str, str, float]] = {}
        self._unclaimed: dict[_Key, tuple[float, str, str, float]] = {}
        self._indexes: dict[tuple[str, str], tuple[tuple[str, ...], float]] = {}
        self._batch_ttl = batch_ttl
        self._index_ttl = index_ttl
        # With a database, as in Redis: pulls per UTC day, and what the flusher must claim.
        self.durable = durable
        self._days: dict[RecordKey, dict[str, int]] = {}
        self._pullers: dict[RecordKey, dict[str, set[str]]] = {}  # day -> puller hashes
        self._dirty: set[RecordKey] = set()
        self._claims: dict[str, list[Delta]] = {}
        self._claims_made = 0
        self.pairs_made = 0  # HEAD + GET pairs made into tag pulls, as RedisStore counts

    def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
        now = time.time()
        with self._lock:
            self._expire(now)
            if batch.id in self._applied:
                return []
            self._applied[batch.id] = now + self._batch_ttl
            for t in batch.tags:
                self._bump_tag(t.repository, t.tag, t.pulls, t.date, t.digest, t.clients)
            for m in batch.manifests:
                old = self._manifests.get((m.repository, m.digest), NEVER_PULLED_MANIFEST)
                date = old.last_pull_date
                if date is None or m.date >= date:
                    date = m.date
                self._manifests[(m.repository, m.digest)] = ManifestRecord(
                    old.pull_count + m.pulls, date
                )
                key = RecordKey("manifest", m.repository, m.digest)
                self._count_day(key, m.pulls, m.date, m.clients)
            for push in batch.pushes:
                self._push(push.repository, push.tag, push.date, push.digest)
            for index in batch.indexes:
                expiry = now + self._index_ttl
                self._indexes[(index.repository, index.digest)] = (index.children, expiry)
            for event in batch.attribution_events:
                if isinstance(event, DigestFetch):
                    self._fetched(event, batch.origin, now + window + skew, window, skew)
                else:
                    self._resolved(event, batch.origin, now + window + skew, window, skew)
        return []

    def _children(self, repository: str, digest: str) -> tuple[str, ...]:
        return self._indexes.get((repository, digest), ((), 0.0))[0]

    def _fetched(
        self, event: DigestFetch, origin: str, expiry: float, window: float, skew: float
    ) -> None:
        key = (event.client, event.repository, event.digest)
        found = self._resolutions.get(key)
        allowed = 0.0 if found is not None and found[1] == origin else skew
        if found is None or not pairs(found[0], event.ts, window, allowed):
            unclaimed = (event.ts, origin, iso_date(event.ts), expiry)
            self._unclaimed.setdefault(key, unclaimed)
            return
        index = found[3]
        if index != "-":  # the whole group waits no more: the index and its children
            for member in (*self._children(event.repository, index), index):
                self._resolutions.pop((event.client, event.repository, member), None)
        self._resolutions.pop(key, None)
        digest = event.digest if index == "-" else index
        date = iso_date(event.ts)
        self._bump_tag(event.repository, found[2], 1, date, digest, (event.client,))
        self.pairs_made += 1

    def _resolved(
        self, event: Resolution, origin: str, expiry: float, window: float, skew: float
    ) -> None:
        children = self._children(event.repository, event.digest)
        for member in (event.digest, *children):  # a GET already waiting, of either
            key = (event.client, event.repository, member)
            claimed = self._unclaimed.get(key)
            allowed = 0.0 if claimed is not None and claimed[1] == origin else skew
            if claimed is not None and pairs(event.ts, claimed[0], window, allowed):
                del self._unclaimed[key]
                tag, date = event.tag, claimed[2]
                self._bump_tag(event.repository, tag, 1, date, event.digest, (event.client,))
                self.pairs_made += 1
                return
        value = (event.ts, origin, event.tag, event.digest if children else "-", expiry)
        for member in (event.digest, *children):
            self._resolutions[(event.client, event.repository, member)] = value

    def _bump_tag(
        self, repository: str, tag: str, count: int, date: str, digest: str, clients: Clients
    ) -> None:
        old = self._tags.get((repository, tag), NEVER_PULLED_TAG)
        if old.last_pull_date is None or date >= old.last_pull_date:
            new = old._replace(
                pull_count=old.pull_count + count,
                last_pull_date=date,
                current_manifest_digest=digest,
            )
        else:
            new = old._replace(pull_count=old.pull_count + count)
        self._tags[(repository, tag)] = new
        self._count_day(RecordKey("tag", repository, tag), count, date, clients)

    def _push(self, repository: str, tag: str, date: str, digest: str) -> None:
        old = self._tags.get((repository, tag), NEVER_PULLED_TAG)
        if old.last_push_date is None or date >= old.last_push_date:
            newest = old.last_pull_date is None or date >= old.last_pull_date
            current = digest if newest else old.current_manifest_digest
            self._tags[(repository, tag)] = old._replace(
                last_push_date=date, current_manifest_digest=current
            )
        elif (repository, tag) not in self._tags:
            self._tags[(repository, tag)] = old
        if self.durable:
            self._dirty.add(RecordKey("tag", repository, tag))

    def _count_day(self, key: RecordKey, count: int, date: str, clients: Clients) -> None:
        if self.durable:
            days = self._days.setdefault(key, {})
            days[date[:10]] = days.get(date[:10], 0) + count
            if clients:
                seen = self._pullers.setdefault(key, {}).setdefault(date[:10], set())
                seen.update(puller_key(client) for client in clients)
            self._dirty.add(key)

    def _expire(self, now: float) -> None:
        # Cheap enough at batch rate; Redis does the same with EX.
        tables: tuple[dict[Any, tuple[Any, ...]], ...] = (
            self._resolutions,
            self._unclaimed,
            self._indexes,
        )
        for table in tables:
            for key in [k for k, entry in table.items() if entry[-1] < now]:
                del table[key]
        for batch_id in [b for b, expiry in self._applied.items() if expiry < now]:
            del self._applied[batch_id]

    # -- the flush worker's side (with a database), as claim.lua and pending.lua --

    def _live(self, key: RecordKey) -> Delta | None:
        if key.kind == "tag":
            tag = self._tags.get((key.repository, key.name))
            if tag is None:
                return None
            days = dict(self._days.get(key, {}))
            return Delta(key, tag.pull_count, tag.last_pull_date, tag.current_manifest_digest,
                         days, tag.last_push_date, self._seen(key))  # fmt: skip
        manifest = self._manifests.get((key.repository, key.name))
        if manifest is None:
            return None
        days = dict(self._days.get(key, {}))
        return Delta(key, manifest.pull_count, manifest.last_pull_date, None, days,
                     None, self._seen(key))  # fmt: skip

    def _seen(self, key: RecordKey) -> dict[str, frozenset[str]]:
        return {day: frozenset(h) for day, h in self._pullers.get(key, {}).items()}

    def held(self, kind: str, repository: str) -> set[str]:
        with self._lock:
            table: dict[Any, Any] = self._tags if kind == "tag" else self._manifests
            names = {name for repo, name in table if repo == repository}
            for deltas in self._claims.values():
                names.update(
                    d.key.name
                    for d in deltas
                    if d.key.kind == kind and d.key.repository == repository
                )
            return names

    def claim(self, claim_id: str, limit: int) -> Claim:
        with self._lock:
            taken = [self._dirty.pop() for _ in range(min(limit, len(self._dirty)))]
            deltas = [delta for key in taken if (delta := self._live(key)) is not None]
            for key in taken:
                table: dict[Any, Any] = self._tags if key.kind == "tag" else self._manifests
                table.pop((key.repository, key.name), None)
                self._days.pop(key, None)
                self._pullers.pop(key, None)
            if deltas:
                self._claims[claim_id] = deltas
                self._claims_made += 1
            return Claim(claim_id, deltas)

    def open_claims(self) -> list[Claim]:
        with self._lock:
            return [Claim(claim_id, list(d)) for claim_id, d in sorted(self._claims.items())]

    def release(self, claim_id: str) -> None:
        with self._lock:
            self._claims.pop(claim_id, None)

    def pending(self, keys: list[RecordKey]) -> Pending:
        with self._lock:
            live = {key: delta for key in keys if (delta := self._live(key)) is not None}
            claims = {
                claim_id: {d.key: d for d in deltas if d.key in keys}
                for claim_id, deltas in self._claims.items()
            }
            found = {cid: found for cid, found in claims.items() if found}
            return Pending(live, found, self._claims_made)

    def claims_made(self, keys: list[RecordKey]) -> object:
        with self._lock:
            return self._claims_made

    def read_tag(self, repository: str, tag: str) -> TagRecord:
        with self._lock:
            return self._tags.get((repository, tag), NEVER_PULLED_TAG)

    def read_manifest(self, repository: str, digest: str) -> ManifestRecord:
        with self._lock:
            return self._manifests.get((repository, digest), NEVER_PULLED_MANIFEST)

    def close(self) -> None:
        pass
