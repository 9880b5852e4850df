"""The Redis store: the seed's key schema, written by one guarded Lua script."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

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
from pullstats_middleware.store.pending import Claim, Delta, Pending, RecordKey

if TYPE_CHECKING:
    import redis

# How long an index's list of children is kept after it was last seen: an index
# is immutable, and a tag pulled less often than this gets its index GET again.
INDEX_TTL = 7 * 24 * 3600


def _script(name: str) -> str:
    return files("pullstats_middleware.store").joinpath(name).read_text()


_SCRIPT = _script("apply_batch.lua")


class RedisStore:
    """`{prefix}/tag/{repo}/{tag}` and `{prefix}/manifest/{repo}/{digest}` hashes.

    Everything else lives under `{prefix}/batch/`, `{prefix}/resolution/`,
    `{prefix}/unclaimed/` and `{prefix}/index/`, which cannot collide with the two
    families above.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "pull_metrics",
        batch_ttl: int = 3600,
        durable: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._batch_ttl = batch_ttl
        # With a database: count per day too, and mark what the flush worker must claim.
        self.durable = durable
        self.pairs_made = 0  # HEAD + GET pairs the batch script made into tag pulls
        # register_script runs EVALSHA and reloads on NOSCRIPT (a restarted Redis).
        self._apply = client.register_script(_SCRIPT)
        self._claim = client.register_script(_script("claim.lua"))
        self._pending = client.register_script(_script("pending.lua"))

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
            "1" if self.durable else "0",
            len(batch.pushes),
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
            tail = f"{client}/{e.repository}/{e.digest}"
            keys += (f"{p}/resolution/{tail}", f"{p}/unclaimed/{tail}")
            keys.append(self.index_key(e.repository, e.digest))
            kind, tag = ("g", "") if isinstance(e, DigestFetch) else ("h", e.tag)
            args += (kind, repr(e.ts), iso_date(e.ts), e.repository, tag, e.digest, client)
            args.append(pullers((e.client,)))
        reply = self._apply(keys=keys, args=args)
        if not isinstance(reply, list) or not reply:
            raise StoreDataError(f"unexpected reply from the batch script: {reply!r}")
        if len(reply) < 2:  # applied before: a re-send
            return []
        self.pairs_made += int(reply[1])
        return [_text(k) for k in reply[2:]]

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

    # -- the flush worker's side (with a database) ----------------------------

    def record_key(self, key: str) -> RecordKey:
        family, _, rest = key[len(self.prefix) + 1 :].partition("/")
        repository, _, name = rest.rpartition("/")
        return RecordKey(family, repository, name)

    def _key(self, record: RecordKey) -> str:
        return f"{self.prefix}/{record.kind}/{record.repository}/{record.name}"

    def held(self, kind: str, repository: str) -> set[str]:
        """The names of `repository`'s tags (`kind` "tag") or manifests this store holds a
        record of, live or claimed: with a database, only what is not yet flushed."""
        head = f"{self.prefix}/{kind}/{repository}/"
        names = set()
        try:
            for raw in self.client.scan_iter(match=_glob(head) + "*", count=1000):
                key = _text(raw)
                if "/" not in key[len(head) :]:  # not a tag of a repository below this one
                    names.add(key[len(head) :])
            for raw in self.client.smembers(f"{self.prefix}/claims"):
                where = f"{self.prefix}/claim/{_text(raw)}"
                for field, _ in self.client.hscan_iter(where, match=_glob(head) + "*", count=1000):
                    if "/" not in _text(field)[len(head) :]:
                        names.add(_text(field)[len(head) :])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return names

    def claim(self, claim_id: str, limit: int) -> Claim:
        keys = [f"{self.prefix}/dirty", f"{self.prefix}/claims", f"{self.prefix}/claim/{claim_id}"]
        claimed = json.loads(self._claim(keys=keys, args=[claim_id, limit]))
        where = f"claim {claim_id}"
        return Claim(claim_id, [self._delta(key, fields, where) for key, fields in claimed.items()])

    def open_claims(self) -> list[Claim]:
        ids = sorted(_text(raw) for raw in self.client.smembers(f"{self.prefix}/claims"))
        return [self._read_claim(claim_id) for claim_id in ids]

    def _read_claim(self, claim_id: str) -> Claim:
        where = f"{self.prefix}/claim/{claim_id}"
        deltas = [
            self._delta(_text(key), json.loads(value), where)
            for key, value in self.client.hgetall(where).items()
        ]
        return Claim(claim_id, deltas)

    def release(self, claim_id: str) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.prefix}/claim/{claim_id}")
            pipe.srem(f"{self.prefix}/claims", claim_id)
            pipe.execute()

    def pending(self, keys: list[RecordKey]) -> Pending:
        names = [self._key(record) for record in keys]
        try:
            reply = self._pending(
                keys=[f"{self.prefix}/claims", *names], args=[f"{self.prefix}/claim/"]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        data = json.loads(reply)
        live = {
            self.record_key(key): self._delta(key, fields, key)
            for key, fields in (data["live"] or {}).items()
        }
        claims = {
            claim_id: {
                self.record_key(key): self._delta(key, fields, f"claim {claim_id}")
                for key, fields in deltas.items()
            }
            for claim_id, deltas in (data["claims"] or {}).items()
        }
        return Pending(live, claims)

    def _delta(self, key: str, fields: dict[str, Any], where: str) -> Delta:
        return Delta.from_fields(self.record_key(key), fields, where)


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
