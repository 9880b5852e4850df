"""What the Redis Cluster store's two helpers (the batch writer, the flush worker's
side) use of it: key names, its connection and slot caller, its script. A
Protocol, so that they depend on this and the store on them, not in a circle."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from pullstats_middleware.store.base import Batch
from pullstats_middleware.store.pending import RecordKey
from pullstats_middleware.store.slot_calls import LuaScript, SlotCaller

if TYPE_CHECKING:
    from redis.cluster import RedisCluster


class ClusterParts(Protocol):
    prefix: str
    durable: bool
    pairs_made: int
    calls: SlotCaller
    script: LuaScript  # apply_batch.lua

    @property
    def cluster(self) -> RedisCluster: ...

    def register(self, repositories: Iterable[str]) -> None:
        """Put repositories on the list of those with records to flush."""
        ...

    def script_call(
        self, batch: Batch, marker: str, window: float, skew: float, *, cluster: bool = False
    ) -> tuple[list[str], list[Any]]: ...

    def repository_key(self, family: str, repository: str) -> str: ...

    def tag_key(self, repository: str, tag: str) -> str: ...

    def pairing_key(self, family: str, client: str, repository: str, digest: str) -> str: ...

    def record_key(self, key: str) -> RecordKey: ...

    def _key(self, record: RecordKey) -> str: ...
