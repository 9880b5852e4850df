"""The Redis store: the seed's key schema, written by one guarded Lua script."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from pullstats_middleware.store.base import Batch, StoreDataError, StoreUnavailable
from pullstats_middleware.store.pending import Claim, Delta, Pending, RecordKey
from pullstats_middleware.store.redis_records import (
    RedisRecords,
    _glob,
    _text,
    claimed_deltas,
    script_text,
)

if TYPE_CHECKING:
    import redis


class RedisStore(RedisRecords):
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
        super().__init__(prefix=prefix, batch_ttl=batch_ttl, durable=durable)
        self.client = client
        self.pairs_made = 0  # HEAD + GET pairs the batch script made into tag pulls
        # register_script runs EVALSHA and reloads on NOSCRIPT (a restarted Redis).
        self._apply = client.register_script(script_text("apply_batch.lua"))
        self._claim = client.register_script(script_text("claim.lua"))
        self._pending = client.register_script(script_text("pending.lua"))

    def _reader(self) -> redis.Redis:
        return self.client

    def apply(self, batch: Batch, *, window: float, skew: float) -> list[str]:
        keys, args = self.script_call(batch, f"{self.prefix}/batch/{batch.id}", window, skew)
        reply = self._apply(keys=keys, args=args)
        if not isinstance(reply, list) or not reply:
            raise StoreDataError(f"unexpected reply from the batch script: {reply!r}")
        if len(reply) < 2:  # applied before: a re-send
            return []
        self.pairs_made += int(reply[1])
        return [_text(k) for k in reply[2:]]

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
        match = _glob(head) + "*"
        try:
            # With a database every live record is in the dirty set (apply_batch.lua marks
            # each one it writes, claim.lua takes them out): scan that, not every key of
            # the database (batch markers, pairing keys, other repositories' records).
            live = (
                self.client.sscan_iter(f"{self.prefix}/dirty", match=match, count=1000)
                if self.durable
                else self.client.scan_iter(match=match, count=1000)
            )
            for raw in live:
                key = _text(raw)
                if "/" not in key[len(head) :]:  # not a tag of a repository below this one
                    names.add(key[len(head) :])
            for raw in self.client.smembers(f"{self.prefix}/claims"):
                where = f"{self.prefix}/claim/{_text(raw)}"
                for field, _ in self.client.hscan_iter(where, match=match, count=1000):
                    if "/" not in _text(field)[len(head) :]:
                        names.add(_text(field)[len(head) :])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return names

    def claim(self, claim_id: str, limit: int) -> Claim:
        keys = [f"{self.prefix}/dirty", f"{self.prefix}/claims", f"{self.prefix}/claim/{claim_id}"]
        keys.append(f"{self.prefix}/claims_made")
        reply = self._claim(keys=keys, args=[claim_id, limit])
        return Claim(claim_id, claimed_deltas(reply, f"claim {claim_id}", self._delta))

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
                keys=[f"{self.prefix}/claims", f"{self.prefix}/claims_made", *names],
                args=[f"{self.prefix}/claim/"],
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
        return Pending(live, claims, data["made"])

    def claims_made(self, keys: list[RecordKey]) -> object:
        try:
            return int(self.client.get(f"{self.prefix}/claims_made") or 0)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _delta(self, key: str, fields: dict[str, Any], where: str) -> Delta:
        return Delta.from_fields(self.record_key(key), fields, where)
