"""The Redis store: the seed's key schema, written by one guarded Lua script."""

from __future__ import annotations

import hashlib
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from pullstats_middleware.store.base import (
    Batch,
    DigestFetch,
    ManifestRecord,
    StoreDataError,
    StoreUnavailable,
    TagRecord,
    iso_date,
)

if TYPE_CHECKING:
    import redis

# How long an index's list of children is kept after it was last seen: an index
# is immutable, and a tag pulled less often than this gets its index GET again.
INDEX_TTL = 7 * 24 * 3600
_SCRIPT = files("pullstats_middleware.store").joinpath("apply_batch.lua").read_text()


class RedisStore:
    """`{prefix}/tag/{repo}/{tag}` and `{prefix}/manifest/{repo}/{digest}` hashes.

    Everything else lives under `{prefix}/batch/`, `{prefix}/resolution/`,
    `{prefix}/unclaimed/` and `{prefix}/index/`, which cannot collide with the two
    families above.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "pull_metrics", batch_ttl: int = 3600
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._batch_ttl = batch_ttl
        # register_script runs EVALSHA and reloads on NOSCRIPT (a restarted Redis).
        self._apply = client.register_script(_SCRIPT)

    def tag_key(self, repository: str, tag: str) -> str:
        return f"{self.prefix}/tag/{repository}/{tag}"

    def manifest_key(self, repository: str, digest: str) -> str:
        return f"{self.prefix}/manifest/{repository}/{digest}"

    def index_key(self, repository: str, digest: str) -> str:
        return f"{self.prefix}/index/{repository}/{digest}"

    def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
        p = self.prefix
        keys = [f"{p}/batch/{batch.id}"]
        args: list[Any] = [
            self._batch_ttl,
            len(batch.tags),
            len(batch.manifests),
            len(batch.attribution_events),
            window,
            skew,
            p,
            batch.origin or "-",
            len(batch.indexes),
            INDEX_TTL,
        ]
        for t in batch.tags:
            keys.append(self.tag_key(t.repository, t.tag))
            args += (t.pulls, t.date, t.digest)
        for m in batch.manifests:
            keys.append(self.manifest_key(m.repository, m.digest))
            args += (m.pulls, m.date)
        for index in batch.indexes:
            keys.append(self.index_key(index.repository, index.digest))
            args.append(" ".join(index.children))
        for e in batch.attribution_events:
            client = client_key(e.client)
            tail = f"{client}/{e.repository}/{e.digest}"
            keys += (f"{p}/resolution/{tail}", f"{p}/unclaimed/{tail}")
            keys.append(self.index_key(e.repository, e.digest))
            if isinstance(e, DigestFetch):
                args += ("g", repr(e.ts), iso_date(e.ts), e.repository, "", e.digest, client)
            else:
                args += ("h", repr(e.ts), iso_date(e.ts), e.repository, e.tag, e.digest, client)
        reply = self._apply(keys=keys, args=args)
        if not isinstance(reply, list) or not reply:
            raise StoreDataError(f"unexpected reply from the batch script: {reply!r}")
        return [_text(k) for k in reply[1:]]

    def read_tag(self, repository: str, tag: str) -> TagRecord:
        key = self.tag_key(repository, tag)
        count, date, digest = self._hmget(
            key, "pull_count", "last_pull_date", "current_manifest_digest"
        )
        return TagRecord(_count(key, count), _opt(date), _opt(digest))

    def read_manifest(self, repository: str, digest: str) -> ManifestRecord:
        key = self.manifest_key(repository, digest)
        count, date = self._hmget(key, "pull_count", "last_pull_date")
        return ManifestRecord(_count(key, count), _opt(date))

    def _hmget(self, key: str, *names: str) -> list[Any]:
        try:
            return list(self.client.hmget(key, names))
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):  # someone else's value under our key
                raise StoreDataError(
                    f"Redis key {key!r} holds a value that is not a hash"
                ) from None
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.client.close()


def client_key(identity: str) -> str:
    """The client identity as it appears in a key: hashed, so no credential is written.
    Hashed here, on the recorder thread, never on the request path."""
    return hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt(value: Any) -> str | None:
    return None if value is None else _text(value)


def _count(key: str, value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        raise StoreDataError(
            f"Redis key {key!r} field 'pull_count' holds {_text(value)!r}, not an integer"
        ) from None
