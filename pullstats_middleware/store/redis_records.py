"""What the Redis store and the Redis Cluster store share: the hashes' fields, the
arguments of apply_batch.lua, and the reads of one record."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from pullstats_middleware.puller import puller_key
from pullstats_middleware.store.base import (
    Batch,
    DigestFetch,
    ManifestRecord,
    StoreDataError,
    StoreUnavailable,
    TagRecord,
    iso_date,
)
from pullstats_middleware.store.pending import Delta

# What a Redis client raises when the store cannot be reached or answer right now
# (redis-py's cluster client raises RedisClusterException, not a RedisError, for some).
FAILURES = (RedisError, RedisClusterException, OSError)

# How long an index's list of children is kept after it was last seen: an index
# is immutable, and a tag pulled less often than this gets its index GET again.
INDEX_TTL = 7 * 24 * 3600


def script_text(name: str) -> str:
    return files("pullstats_middleware.store").joinpath(name).read_text()


class RedisRecords:
    """Key names (the seed's schema; the cluster store adds hash tags), the batch
    script's arguments, and reads through `_reader()`, the client to read with."""

    def __init__(self, *, prefix: str, batch_ttl: int, durable: bool) -> None:
        self.prefix = prefix
        self._batch_ttl = batch_ttl
        # With a database: count per day too, and mark what the flush worker must claim.
        self.durable = durable

    def _reader(self) -> Any:
        raise NotImplementedError

    def tag_key(self, repository: str, tag: str) -> str:
        return f"{self.prefix}/tag/{repository}/{tag}"

    def manifest_key(self, repository: str, digest: str) -> str:
        return f"{self.prefix}/manifest/{repository}/{digest}"

    def index_key(self, repository: str, digest: str) -> str:
        return f"{self.prefix}/index/{repository}/{digest}"

    def pairing_key(self, family: str, client: str, repository: str, digest: str) -> str:
        """A HEAD waiting for its GET (`resolution`), or a GET for its HEAD (`unclaimed`)."""
        return f"{self.prefix}/{family}/{client}/{repository}/{digest}"

    def script_call(
        self, batch: Batch, marker: str, window: float, skew: float, *, cluster: bool = False
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of apply_batch.lua for `batch`, guarded by `marker`."""
        keys = [marker]
        args: list[Any] = [
            self._batch_ttl,
            len(batch.tags),
            len(batch.manifests),
            len(batch.attribution_events),
            window,
            skew,
            self.prefix,
            batch.origin or "-",
            len(batch.indexes),
            INDEX_TTL,
            "1" if self.durable else "0",
            len(batch.pushes),
            "1" if cluster else "0",
        ]
        pullers = self._pullers
        for t in batch.tags:
            keys.append(self.tag_key(t.repository, t.tag))
            args += (t.pulls, t.date, t.digest, pullers(t.clients))
        for m in batch.manifests:
            keys.append(self.manifest_key(m.repository, m.digest))
            args += (m.pulls, m.date, pullers(m.clients))
        for push in batch.pushes:
            keys.append(self.tag_key(push.repository, push.tag))
            args += (push.date, push.digest)
        for index in batch.indexes:
            keys.append(self.index_key(index.repository, index.digest))
            args.append(" ".join(index.children))
        for e in batch.attribution_events:
            client = client_key(e.client)
            keys.append(self.pairing_key("resolution", client, e.repository, e.digest))
            keys.append(self.pairing_key("unclaimed", client, e.repository, e.digest))
            keys.append(self.index_key(e.repository, e.digest))
            kind, tag = ("g", "") if isinstance(e, DigestFetch) else ("h", e.tag)
            args += (kind, repr(e.ts), iso_date(e.ts), e.repository, tag, e.digest, client)
            args.append(pullers((e.client,)))
        return keys, args

    def _pullers(self, clients: tuple[str, ...]) -> str:
        """Who pulled, hashed, space-separated: with a database, the script counts
        each as a puller of the key's day (`u:YYYY-MM-DD:<hash>`)."""
        return " ".join({puller_key(client) for client in clients}) if self.durable else ""

    def read_tag(self, repository: str, tag: str) -> TagRecord:
        key = self.tag_key(repository, tag)
        count, date, digest, pushed = self._hmget(
            key, "pull_count", "last_pull_date", "current_manifest_digest", "last_push_date"
        )
        return TagRecord(_count(key, count), _opt(date), _opt(digest), _opt(pushed))

    def read_manifest(self, repository: str, digest: str) -> ManifestRecord:
        key = self.manifest_key(repository, digest)
        count, date = self._hmget(key, "pull_count", "last_pull_date")
        return ManifestRecord(_count(key, count), _opt(date))

    def _hmget(self, key: str, *names: str) -> list[Any]:
        try:
            return list(self._reader().hmget(key, names))
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):  # someone else's value under our key
                raise StoreDataError(
                    f"Redis key {key!r} holds a value that is not a hash"
                ) from None
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except FAILURES as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


def claimed_deltas(
    reply: list[bytes], where: str, delta: Callable[[str, dict[str, Any], str], Delta]
) -> list[Delta]:
    """claim.lua's answer (key, its fields as JSON, key, …) as deltas."""
    # One JSON array parsed in one call: a call per record cost a quarter of the parse.
    values = [_text(value) for value in reply[1::2]]
    try:
        parsed = json.loads("[" + ",".join(values) + "]")
    except ValueError:
        parsed = None
    if (
        not isinstance(parsed, list)
        or len(parsed) != len(values)  # a value of several, which would shift the rest
        or not all(type(fields) is dict for fields in parsed)
    ):
        raise StoreDataError(f"{where} holds fields that are not JSON objects")
    return [
        delta(_text(key), fields, where) for key, fields in zip(reply[::2], parsed, strict=True)
    ]


def client_key(identity: str) -> str:
    """The client identity as it appears in a key: hashed, so no credential is written.
    Hashed here, on the recorder thread, never on the request path."""
    return hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


def _glob(text: str) -> str:
    """`text` as a literal in a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


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
