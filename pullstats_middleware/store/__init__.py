"""Where pull counts live: Redis (one, Sentinel, or a Cluster) in production, process
memory by default."""

from pullstats_middleware.store.base import (
    Batch,
    DigestFetch,
    IndexChildren,
    ManifestDelta,
    ManifestRecord,
    Push,
    Resolution,
    Store,
    StoreDataError,
    StoreUnavailable,
    TagDelta,
    TagRecord,
    iso_date,
)
from pullstats_middleware.store.cluster import RedisClusterStore, redis_store
from pullstats_middleware.store.memory import MemoryStore
from pullstats_middleware.store.redis import RedisStore

__all__ = [
    "Batch",
    "DigestFetch",
    "IndexChildren",
    "ManifestDelta",
    "ManifestRecord",
    "MemoryStore",
    "Push",
    "RedisClusterStore",
    "RedisStore",
    "Resolution",
    "Store",
    "StoreDataError",
    "StoreUnavailable",
    "TagDelta",
    "TagRecord",
    "iso_date",
    "redis_store",
]
