"""A batch applied to a Redis Cluster: cut by hash slot, one apply_batch.lua call per
slot with a marker of its own, every call for one master in one pipeline.

The keys a call names up front are those the batch itself names, plus what this
process has learned (the children of an index it saw, the tag a HEAD it recorded
resolved); a script that needs more names them and writes nothing (its plan pass),
and is called again with them.

With a master down, the parts for the other masters still apply; then the batch
fails, and the recorder sends it again, whole: what was applied finds its marker.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.crc import key_slot

from pullstats_middleware.store.base import Batch, DigestFetch, StoreDataError, StoreUnavailable
from pullstats_middleware.store.redis_records import _text, client_key
from pullstats_middleware.store.slot_calls import SlotCall

if TYPE_CHECKING:
    from pullstats_middleware.store.cluster_parts import ClusterParts

# A part whose script keeps naming keys it was not given (other writers keep
# changing what it would touch) is given up after this many calls; the recorder
# sends the batch again later.
_CALLS_PER_PART = 8
_REMEMBERED = 10_000  # index children and HEAD tags kept to name keys up front


@dataclass(slots=True)
class _Part:
    """What of a batch falls in one slot, and the extra keys its script will touch."""

    batch: Batch
    repositories: set[str] = field(default_factory=set)
    expected: list[str] = field(default_factory=list)


class BatchWriter:
    def __init__(self, store: ClusterParts) -> None:
        self.store = store
        self._children: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        self._head_tags: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self.calls_for_keys = 0  # script calls that answered with keys they were not given

    def apply(self, batch: Batch, window: float, skew: float) -> list[str]:
        store = self.store
        parts = self._parts(batch)
        repositories = set().union(*(part.repositories for part in parts))
        if store.durable:  # before: a worker that looks now finds them (after: see below)
            store.register(repositories)
        calls = []
        for part in parts:
            marker = f"{store.prefix}/batch/{{{min(part.repositories)}}}/{batch.id}"
            keys, args = store.script_call(part.batch, marker, window, skew, cluster=True)
            calls.append((part, SlotCall(store.script, keys + part.expected, args)))
        skipped, failed = self._call(calls)
        if failed:
            raise failed[0]
        if store.durable:  # again: a worker may have retired one meanwhile (else: the sweep)
            with contextlib.suppress(StoreUnavailable):
                store.register(repositories)
        self._remember(batch)
        return skipped

    def _call(self, sent: list[tuple[_Part, SlotCall]]) -> tuple[list[str], list[StoreUnavailable]]:
        """Each part's call, and again with the keys it named; (skipped keys, why the
        parts that could not be applied were not)."""
        skipped: list[str] = []
        failed: list[StoreUnavailable] = []
        for _ in range(_CALLS_PER_PART):
            again = []
            replies = self.store.calls.run([c for _, c in sent], wait=True, partial=True)
            for (part, call), reply in zip(sent, replies, strict=True):
                if isinstance(reply, StoreUnavailable):
                    failed.append(reply)
                elif not isinstance(reply, list) or not reply or int(reply[0]) not in (0, 1, 2):
                    raise StoreDataError(f"unexpected reply from the batch script: {reply!r}")
                elif int(reply[0]) == 2:  # keys it needs that it was not given: nothing written
                    self.calls_for_keys += 1
                    call.keys += [_text(key) for key in reply[1:]]
                    again.append((part, call))
                elif int(reply[0]) == 1:  # applied: {1, pairs made, skipped keys...}
                    self.store.pairs_made += int(reply[1])
                    skipped += [_text(key) for key in reply[2:]]
            if not again:
                return skipped, failed
            sent = again
        return skipped, [StoreUnavailable("the batch script kept asking for more keys")]

    def _parts(self, batch: Batch) -> list[_Part]:
        parts: dict[int, _Part] = {}

        def part(repository: str) -> _Part:
            slot = key_slot(repository.encode())
            found = parts.get(slot)
            if found is None:
                found = parts[slot] = _Part(Batch(batch.id, batch.origin))
            if repository not in found.repositories:
                found.repositories.add(repository)
                found.expected.append(self.store.repository_key("held", repository))
            return found

        for t in batch.tags:
            part(t.repository).batch.tags.append(t)
        for m in batch.manifests:
            part(m.repository).batch.manifests.append(m)
        for push in batch.pushes:
            part(push.repository).batch.pushes.append(push)
        for index in batch.indexes:
            part(index.repository).batch.indexes.append(index)
            _learn(self._children, (index.repository, index.digest), index.children)
        for event in batch.attribution_events:
            found = part(event.repository)
            found.batch.attribution_events.append(event)
            found.expected += self._expected(event)
        return list(parts.values())

    def _expected(self, event: Any) -> list[str]:
        """Keys the script will likely touch for `event` beyond its own three."""
        store, repository, client = self.store, event.repository, client_key(event.client)
        out = []
        if isinstance(event, DigestFetch):
            tag = self._head_tags.get((client, repository, event.digest))
            if tag is not None:
                out.append(store.tag_key(repository, tag))
        else:
            out.append(store.tag_key(repository, event.tag))
        for member in self._children.get((repository, event.digest), ()):
            out.append(store.pairing_key("resolution", client, repository, member))
            out.append(store.pairing_key("unclaimed", client, repository, member))
        return out

    def _remember(self, batch: Batch) -> None:
        for event in batch.attribution_events:
            if not isinstance(event, DigestFetch):
                where = (client_key(event.client), event.repository, event.digest)
                _learn(self._head_tags, where, event.tag)


def _learn(table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > _REMEMBERED:
        table.popitem(last=False)
