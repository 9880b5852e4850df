"""The flush worker's side of the Redis Cluster store, and the listings' reads.

A claim moves records of one repository only: its set of held records, its open
claims and the claim hashes share the repository's slot, so claim.lua and
pending.lua stay single atomic scripts, exactly as with one Redis. What no slot
can hold atomically is the list of repositories that have something to flush:
`{prefix}/dirty-repositories` is a hint. The batch writer adds a repository to it
before and after its script; a worker removes one only after finding its held
set and its open claims empty, and adds it back if either is not (read in that
order, in one script). A writer killed between its script and the second add can
leave a repository out: the sweep (SCAN of every master for held sets and open
claims, when a worker starts and every `SWEEP_INTERVAL` seconds) puts it back.
Nothing is lost meanwhile: reads find the records by their keys, not by the hint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pullstats_middleware.store.base import StoreDataError, StoreUnavailable
from pullstats_middleware.store.pending import Claim, Delta, Pending, RecordKey
from pullstats_middleware.store.redis_records import (
    FAILURES,
    _glob,
    _text,
    claimed_deltas,
    script_text,
)
from pullstats_middleware.store.slot_calls import LuaScript, SlotCall

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

    from pullstats_middleware.store.cluster_parts import ClusterParts

SWEEP_INTERVAL = 300.0
_RETIRE = LuaScript("return redis.call('SCARD', KEYS[1]) + redis.call('SCARD', KEYS[2])")
_RELEASE = LuaScript("redis.call('SREM', KEYS[1], ARGV[1]) return redis.call('DEL', KEYS[2])")


class ClusterClaims:
    def __init__(self, store: ClusterParts) -> None:
        self.store = store
        self.registry = f"{store.prefix}/dirty-repositories"
        self._claim = LuaScript(script_text("claim.lua"))
        self._pending = LuaScript(script_text("pending.lua"))
        self._queue: list[str] = []  # repositories this worker has yet to look at
        self._repository_of: dict[str, str] = {}  # claim id -> its repository
        self._open: dict[str, list[str]] = {}  # repository -> claim ids seen last read
        self._swept: float | None = None

    @property
    def client(self) -> RedisCluster:
        return self.store.cluster

    def _repository_key(self, family: str, repository: str) -> str:
        return self.store.repository_key(family, repository)

    def _claim_key(self, repository: str, claim_id: str) -> str:
        return f"{self.store.prefix}/claim/{{{repository}}}/{claim_id}"

    def register(self, repositories: Iterable[str]) -> None:
        names = sorted(repositories)
        if names:
            self._redis(self.client.sadd, self.registry, *names)

    def _redis(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except FAILURES as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # -- claim, settle, release ---------------------------------------------------

    def claim(self, claim_id: str, limit: int) -> Claim:
        refilled = False
        while True:
            if not self._queue:
                if refilled:
                    return Claim(claim_id, [])
                refilled = True
                self._queue = sorted(self._registered(), reverse=True)
                continue
            repository = self._queue.pop()
            held = self._repository_key("held", repository)
            candidates = self._redis(self.client.srandmember, held, limit)
            if not candidates:
                self._retire(repository)
                continue
            keys = [held, self._repository_key("claims", repository)]
            keys += [self._claim_key(repository, claim_id)]
            keys += [self._repository_key("claims_made", repository), *map(_text, candidates)]
            reply = self.store.calls.run(
                [SlotCall(self._claim, keys, [claim_id, limit, "declared"])], wait=True
            )[0]
            self._queue.append(repository)  # it may hold more, or others took these
            if reply:
                self._repository_of[claim_id] = repository
                return Claim(claim_id, claimed_deltas(reply, f"claim {claim_id}", self._delta))

    def _retire(self, repository: str) -> None:
        """Off the list, unless it holds records or open claims (added back then)."""
        self._redis(self.client.srem, self.registry, repository)
        keys = [self._repository_key("held", repository)]
        keys.append(self._repository_key("claims", repository))
        if self.store.calls.run([SlotCall(_RETIRE, keys, [])])[0]:
            self.register([repository])

    def _registered(self) -> set[str]:
        if self._swept is None or time.monotonic() - self._swept > SWEEP_INTERVAL:
            self.sweep()
        return {_text(name) for name in self._redis(self.client.smembers, self.registry)}

    def sweep(self) -> int:
        """Every repository with held records or open claims back on the list; how many."""
        found = set()
        for family in ("held", "claims"):
            pattern = f"{_glob(self.store.prefix)}/{family}/{{*}}"
            keys = self._redis(self.client.scan_iter, match=pattern, count=1000)
            for key in self._redis(list, keys):
                found.add(_text(key).split("{", 1)[1][:-1])
        self.register(found)
        self._swept = time.monotonic()
        return len(found)

    def open_claims(self) -> list[Claim]:
        repositories = sorted(self._registered())
        pipe = self.client.pipeline()  # type: ignore[no-untyped-call]
        for repository in repositories:
            pipe.smembers(self._repository_key("claims", repository))
        ids = self._redis(pipe.execute)
        owned = [(r, _text(i)) for r, found in zip(repositories, ids, strict=True) for i in found]
        pipe = self.client.pipeline()  # type: ignore[no-untyped-call]
        for repository, claim_id in owned:
            pipe.hgetall(self._claim_key(repository, claim_id))
        claims = []
        for (repository, claim_id), fields in zip(owned, self._redis(pipe.execute), strict=True):
            self._repository_of[claim_id] = repository
            where = self._claim_key(repository, claim_id)
            deltas = [self._delta(_text(k), json.loads(v), where) for k, v in fields.items()]
            claims.append(Claim(claim_id, deltas))
        return sorted(claims)

    def release(self, claim_id: str) -> None:
        repository = self._repository_of.pop(claim_id, None)
        if repository is None:
            raise StoreDataError(f"claim {claim_id} was not claimed or read by this store")
        keys = [self._repository_key("claims", repository), self._claim_key(repository, claim_id)]
        self.store.calls.run([SlotCall(_RELEASE, keys, [claim_id])])

    # -- reads ----------------------------------------------------------------------

    def pending(self, keys: list[RecordKey]) -> Pending:
        """pending.lua per repository (its claims are in its slot), all in one round."""
        by_repository: dict[str, list[str]] = {}
        for record in keys:
            by_repository.setdefault(record.repository, []).append(self.store._key(record))
        calls, repositories = [], sorted(by_repository)
        for repository in repositories:
            names = by_repository[repository]
            expected = [self._claim_key(repository, i) for i in self._open.get(repository, ())]
            prefix = self._claim_key(repository, "")
            call_keys = [self._repository_key("claims", repository)]
            call_keys += [self._repository_key("claims_made", repository), *names, *expected]
            calls.append(SlotCall(self._pending, call_keys, [prefix, len(names), "1"]))
        live: dict[RecordKey, Delta] = {}
        claims: dict[str, dict[RecordKey, Delta]] = {}
        made: dict[str, int] = {}
        for _ in range(8):
            again = []
            for repository, call, reply in zip(
                repositories, calls, self.store.calls.run(calls), strict=True
            ):
                data = json.loads(reply)
                if data.get("missing"):  # a claim opened since we last looked: ask again
                    call.keys += data["missing"]
                    again.append((repository, call))
                    continue
                found = data["claims"] or {}
                made[repository] = data["made"]
                if found:
                    self._open[repository] = sorted(found)
                else:
                    self._open.pop(repository, None)
                for key, fields in (data["live"] or {}).items():
                    live[self.store.record_key(key)] = self._delta(key, fields, key)
                for claim_id, deltas in found.items():
                    claims.setdefault(claim_id, {}).update(
                        (self.store.record_key(k), self._delta(k, v, f"claim {claim_id}"))
                        for k, v in deltas.items()
                    )
            if not again:
                return Pending(live, claims, made)
            repositories, calls = [r for r, _ in again], [c for _, c in again]
        raise StoreUnavailable("claims kept opening while reading; try again")

    def claims_made(self, keys: list[RecordKey]) -> object:
        repositories = sorted({record.repository for record in keys})
        pipe = self.client.pipeline()  # type: ignore[no-untyped-call]
        for repository in repositories:
            pipe.get(self._repository_key("claims_made", repository))
        counts = self._redis(pipe.execute)
        return {r: int(n or 0) for r, n in zip(repositories, counts, strict=True)}

    def held(self, kind: str, repository: str) -> set[str]:
        head = f"{self.store.prefix}/{kind}/{{{repository}}}/"
        names = set()
        members = self._redis(self.client.smembers, self._repository_key("held", repository))
        ids = self._redis(self.client.smembers, self._repository_key("claims", repository))
        for claim_id in ids:
            where = self._claim_key(repository, _text(claim_id))
            members |= set(self._redis(self.client.hkeys, where))
        for raw in members:
            key = _text(raw)
            if key.startswith(head):
                names.add(key[len(head) :])
        return names

    def _delta(self, key: str, fields: dict[str, Any], where: str) -> Delta:
        return Delta.from_fields(self.store.record_key(key), fields, where)
