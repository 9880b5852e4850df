"""The Redis Cluster store: the Redis store's hashes and scripts, every key of a
repository in one hash slot (docs/design.md, "Redis Cluster").

Every key name carries its repository as hash tag, `{prefix}/tag/{repo}/{tag}`,
so a repository's counts, pairing state and batch markers live together. A batch
is cut by slot; each part is one call of apply_batch.lua with a marker of its own
in that slot (`{prefix}/batch/{repo}/{batch id}`), all parts for one master in
one pipeline. A part re-sent after a failure finds its marker and changes nothing,
so a batch that failed half-way is simply sent again, whole.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.crc import key_slot

from pullstats_middleware.store.base import Batch, DigestFetch, StoreDataError, StoreUnavailable
from pullstats_middleware.store.cluster_claims import ClusterClaims
from pullstats_middleware.store.pending import Claim, Pending, RecordKey
from pullstats_middleware.store.redis import RedisStore
from pullstats_middleware.store.redis_records import (
    FAILURES,
    RedisRecords,
    _text,
    client_key,
    script_text,
)
from pullstats_middleware.store.slot_calls import LuaScript, SlotCall, SlotCaller

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

    from pullstats_middleware.config import RedisSettings

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


class RedisClusterStore(RedisRecords):
    """`{prefix}/tag/{repo}/{tag}` and `{prefix}/manifest/{repo}/{digest}` hashes, and
    `{prefix}/held/{repo}`: the set of the repository's hashes (with a database: those
    not yet flushed), which listings read and the flush worker claims from."""

    def __init__(
        self,
        client: RedisCluster | Callable[[], RedisCluster],
        *,
        prefix: str = "pull_metrics",
        batch_ttl: int = 3600,
        durable: bool = False,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        super().__init__(prefix=prefix, batch_ttl=batch_ttl, durable=durable)
        # Connected at first use: redis-py's RedisCluster asks a node for the slot map
        # when it is made, and a cluster down at start-up must not stop the app.
        self._connect = client if callable(client) else (lambda: client)
        self._client: RedisCluster | None = None
        self._connecting = threading.Lock()
        self.calls = SlotCaller(self, wait_replicas=wait_replicas, wait_timeout=wait_timeout)
        self.script = LuaScript(script_text("apply_batch.lua"))
        # Names the script would otherwise have to tell us (a round trip each).
        self._children: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        self._head_tags: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self.claims = ClusterClaims(self)
        self.calls_for_keys = 0  # script calls that answered with keys they were not given

    @property
    def cluster(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._connecting:
                if self._client is None:
                    try:
                        self._client = self._connect()
                    except FAILURES as exc:
                        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
                client = self._client
        return client

    def _reader(self) -> RedisCluster:
        return self.cluster

    # -- key names: the repository is the hash tag --------------------------------

    def tag_key(self, repository: str, tag: str) -> str:
        return f"{self.prefix}/tag/{{{repository}}}/{tag}"

    def manifest_key(self, repository: str, digest: str) -> str:
        return f"{self.prefix}/manifest/{{{repository}}}/{digest}"

    def index_key(self, repository: str, digest: str) -> str:
        return f"{self.prefix}/index/{{{repository}}}/{digest}"

    def pairing_key(self, family: str, client: str, repository: str, digest: str) -> str:
        return f"{self.prefix}/{family}/{{{repository}}}/{client}/{digest}"

    def repository_key(self, family: str, repository: str) -> str:
        """`held`, `claims`: one per repository."""
        return f"{self.prefix}/{family}/{{{repository}}}"

    def record_key(self, key: str) -> RecordKey:
        family, _, rest = key[len(self.prefix) + 1 :].partition("/")
        repository, _, name = rest[1:].partition("}/")
        return RecordKey(family, repository, name)

    def _key(self, record: RecordKey) -> str:
        return f"{self.prefix}/{record.kind}/{{{record.repository}}}/{record.name}"

    # -- writing -------------------------------------------------------------------

    def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
        parts = self._parts(batch)
        repositories = set().union(*(part.repositories for part in parts))
        if self.durable:  # before: a worker that looks now finds them (after: see below)
            self.claims.register(repositories)
        calls = []
        for part in parts:
            marker = f"{self.prefix}/batch/{{{min(part.repositories)}}}/{batch.id}"
            keys, args = self.script_call(part.batch, marker, window, skew, cluster=True)
            calls.append(SlotCall(self.script, keys + part.expected, args))
        skipped: list[str] = []
        for _ in range(_CALLS_PER_PART):
            again = []
            for call, reply in zip(calls, self.calls.run(calls, wait=True), strict=True):
                if not isinstance(reply, list) or not reply or int(reply[0]) not in (0, 1, 2):
                    raise StoreDataError(f"unexpected reply from the batch script: {reply!r}")
                if int(reply[0]) == 2:  # keys it needs that it was not given: nothing written
                    self.calls_for_keys += 1
                    call.keys += [_text(key) for key in reply[1:]]
                    again.append(call)
                else:
                    skipped += [_text(key) for key in reply[1:]]
            if not again:
                break
            calls = again
        else:
            raise StoreUnavailable("the batch script kept asking for more keys; retrying later")
        if self.durable:  # again: a worker may have retired a repository in between
            self.claims.register(repositories)
        self._remember(batch)
        return skipped

    def _parts(self, batch: Batch) -> list[_Part]:
        parts: dict[int, _Part] = {}

        def part(repository: str) -> _Part:
            slot = key_slot(repository.encode())
            found = parts.get(slot)
            if found is None:
                found = parts[slot] = _Part(Batch(batch.id, batch.origin))
            if repository not in found.repositories:
                found.repositories.add(repository)
                found.expected.append(self.repository_key("held", repository))
            return found

        for t in batch.tags:
            part(t.repository).batch.tags.append(t)
        for m in batch.manifests:
            part(m.repository).batch.manifests.append(m)
        for push in batch.pushes:
            part(push.repository).batch.pushes.append(push)
        for index in batch.indexes:
            part(index.repository).batch.indexes.append(index)
            self._learn(self._children, (index.repository, index.digest), index.children)
        for event in batch.attribution_events:
            found = part(event.repository)
            found.batch.attribution_events.append(event)
            found.expected += self._expected(event)
        return list(parts.values())

    def _expected(self, event: Any) -> list[str]:
        """Keys the script will likely touch for `event` beyond its own three."""
        repository, client = event.repository, client_key(event.client)
        out = []
        if isinstance(event, DigestFetch):
            tag = self._head_tags.get((client, repository, event.digest))
            if tag is not None:
                out.append(self.tag_key(repository, tag))
        else:
            out.append(self.tag_key(repository, event.tag))
        for member in self._children.get((repository, event.digest), ()):
            out.append(self.pairing_key("resolution", client, repository, member))
            out.append(self.pairing_key("unclaimed", client, repository, member))
        return out

    def _remember(self, batch: Batch) -> None:
        for event in batch.attribution_events:
            if not isinstance(event, DigestFetch):
                where = (client_key(event.client), event.repository, event.digest)
                self._learn(self._head_tags, where, event.tag)

    @staticmethod
    def _learn(table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > _REMEMBERED:
            table.popitem(last=False)

    # -- the flush worker's side and the listings' -------------------------------------

    def held(self, kind: str, repository: str) -> set[str]:
        return self.claims.held(kind, repository)

    def claim(self, claim_id: str, limit: int) -> Claim:
        return self.claims.claim(claim_id, limit)

    def open_claims(self) -> list[Claim]:
        return self.claims.open_claims()

    def release(self, claim_id: str) -> None:
        self.claims.release(claim_id)

    def pending(self, keys: list[RecordKey]) -> Pending:
        return self.claims.pending(keys)

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(*FAILURES):
                self._client.close()


def redis_store(
    settings: RedisSettings, *, prefix: str, durable: bool
) -> RedisStore | RedisClusterStore:
    """The store for `settings`: one Redis (a URL, Sentinel) or a Redis Cluster."""
    if settings.cluster:
        return RedisClusterStore(
            settings.client,  # type: ignore[arg-type]
            prefix=prefix,
            durable=durable,
            wait_replicas=settings.wait_replicas,
            wait_timeout=settings.socket_timeout / 2,  # answered before the socket gives up
        )
    return RedisStore(settings.client(), prefix=prefix, durable=durable)  # type: ignore[arg-type]
