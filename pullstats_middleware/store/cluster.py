"""The Redis Cluster store: the Redis store's hashes and scripts, every key of a
repository in one hash slot (docs/design.md, "Redis Cluster").

Every key name carries its repository as hash tag, `{prefix}/tag/{repo}/{tag}`,
so a repository's counts, pairing state and batch markers live together. A batch
is cut by slot; each part is one call of apply_batch.lua with a marker of its own
in that slot (`{prefix}/batch/{repo}/{batch id}`), all parts for one master in
one pipeline. A part re-sent after a failure finds its marker and changes nothing,
so a batch that failed half-way is simply sent again, whole (cluster_writes.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pullstats_middleware.store.base import Batch, StoreUnavailable
from pullstats_middleware.store.cluster_claims import ClusterClaims
from pullstats_middleware.store.cluster_writes import BatchWriter
from pullstats_middleware.store.pending import Claim, Pending, RecordKey
from pullstats_middleware.store.redis import RedisStore
from pullstats_middleware.store.redis_records import (
    FAILURES,
    RedisRecords,
    script_text,
)
from pullstats_middleware.store.slot_calls import LuaScript, SlotCaller

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

    from pullstats_middleware.config import RedisSettings


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
        self.pairs_made = 0  # HEAD + GET pairs the batch script made into tag pulls
        # Connected at first use: redis-py's RedisCluster asks a node for the slot map
        # when it is made, and a cluster down at start-up must not stop the app.
        self._connect = client if callable(client) else (lambda: client)
        self._client: RedisCluster | None = None
        self._connecting = threading.Lock()
        self.calls = SlotCaller(
            lambda: self.cluster, wait_replicas=wait_replicas, wait_timeout=wait_timeout
        )
        self.script = LuaScript(script_text("apply_batch.lua"))
        self.writer = BatchWriter(self)
        self.claims = ClusterClaims(self)

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
        """`held`, `claims`, `claims_made`: one per repository."""
        return f"{self.prefix}/{family}/{{{repository}}}"

    def record_key(self, key: str) -> RecordKey:
        family, _, rest = key[len(self.prefix) + 1 :].partition("/")
        repository, _, name = rest[1:].partition("}/")
        return RecordKey(family, repository, name)

    def _key(self, record: RecordKey) -> str:
        return f"{self.prefix}/{record.kind}/{{{record.repository}}}/{record.name}"

    # -- writing -------------------------------------------------------------------

    def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
        return self.writer.apply(batch, window, skew)

    @property
    def calls_for_keys(self) -> int:
        """Script calls that answered with keys they needed and were not given."""
        return self.writer.calls_for_keys

    # -- the flush worker's side and the listings' -------------------------------------

    def register(self, repositories: Iterable[str]) -> None:
        self.claims.register(repositories)

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

    def claims_made(self, keys: list[RecordKey]) -> object:
        return self.claims.claims_made(keys)

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
