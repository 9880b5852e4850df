"""The embedded default store: process memory, same semantics as Redis.

For a single process and for trying the product out; counts are gone when
the process exits. Every rule here mirrors `apply_batch.lua` rule for rule,
and the store tests run both through the same cases.
"""

from __future__ import annotations

import threading
import time

from pullstats_middleware.store.base import (
    NEVER_PULLED_MANIFEST,
    NEVER_PULLED_TAG,
    Batch,
    DigestFetch,
    ManifestRecord,
    TagRecord,
    iso_date,
)
from pullstats_middleware.store.pairing import pairs

_Key = tuple[str, str, str]


class MemoryStore:
    def __init__(self, *, batch_ttl: float = 3600.0) -> None:
        self._lock = threading.Lock()
        self._tags: dict[tuple[str, str], TagRecord] = {}
        self._manifests: dict[tuple[str, str], ManifestRecord] = {}
        self._applied: dict[str, float] = {}  # batch id -> expiry
        # Both expire window + skew after they were written, like Redis EX.
        # HEAD ts, origin, tag, expiry / GET ts, origin, date, expiry
        self._resolutions: dict[_Key, tuple[float, str, str, float]] = {}
        self._unclaimed: dict[_Key, tuple[float, str, str, float]] = {}
        self._batch_ttl = batch_ttl

    def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
        now = time.time()
        origin = batch.origin
        with self._lock:
            self._expire(now)
            expiry = now + window + skew
            if batch.id in self._applied:
                return []
            self._applied[batch.id] = now + self._batch_ttl
            for t in batch.tags:
                self._bump_tag(t.repository, t.tag, t.pulls, t.date, t.digest)
            for m in batch.manifests:
                old = self._manifests.get((m.repository, m.digest), NEVER_PULLED_MANIFEST)
                date = old.last_pull_date
                if date is None or m.date >= date:
                    date = m.date
                self._manifests[(m.repository, m.digest)] = ManifestRecord(
                    old.pull_count + m.pulls, date
                )
            for event in batch.attribution_events:
                key = (event.client, event.repository, event.digest)
                if isinstance(event, DigestFetch):
                    found = self._resolutions.get(key)
                    allowed = 0.0 if found is not None and found[1] == origin else skew
                    if found is not None and pairs(found[0], event.ts, window, allowed):
                        del self._resolutions[key]
                        self._bump_tag(
                            event.repository, found[2], 1, iso_date(event.ts), event.digest
                        )
                    else:
                        unclaimed = (event.ts, origin, iso_date(event.ts), expiry)
                        self._unclaimed.setdefault(key, unclaimed)
                else:
                    claimed = self._unclaimed.get(key)
                    allowed = 0.0 if claimed is not None and claimed[1] == origin else skew
                    if claimed is not None and pairs(event.ts, claimed[0], window, allowed):
                        del self._unclaimed[key]
                        self._bump_tag(event.repository, event.tag, 1, claimed[2], event.digest)
                    else:
                        self._resolutions[key] = (event.ts, origin, event.tag, expiry)
        return []

    def _bump_tag(self, repository: str, tag: str, count: int, date: str, digest: str) -> None:
        old = self._tags.get((repository, tag), NEVER_PULLED_TAG)
        if old.last_pull_date is None or date >= old.last_pull_date:
            new = TagRecord(old.pull_count + count, date, digest)
        else:
            new = old._replace(pull_count=old.pull_count + count)
        self._tags[(repository, tag)] = new

    def _expire(self, now: float) -> None:
        # Cheap enough at batch rate; Redis does the same with EX.
        for table in (self._resolutions, self._unclaimed):
            for key in [k for k, entry in table.items() if entry[3] < now]:
                del table[key]
        for batch_id in [b for b, expiry in self._applied.items() if expiry < now]:
            del self._applied[batch_id]

    def read_tag(self, repository: str, tag: str) -> TagRecord:
        with self._lock:
            return self._tags.get((repository, tag), NEVER_PULLED_TAG)

    def read_manifest(self, repository: str, digest: str) -> ManifestRecord:
        with self._lock:
            return self._manifests.get((repository, digest), NEVER_PULLED_MANIFEST)

    def close(self) -> None:
        pass
