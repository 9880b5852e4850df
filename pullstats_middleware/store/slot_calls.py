"""Lua scripts run on the Redis Cluster master that serves their keys' slot.

redis-py's `RedisCluster` follows redirects for one command at a time. A batch
wants more: its scripts for one node in one round trip, and a `WAIT` on the *same
connection* as the scripts it waits for (WAIT counts the replicas that hold that
connection's last write; on another connection it would wait for nothing). So
each round sends one pipeline per master, the scripts and then WAIT, and the
scripts answered by a redirect go again in the next round:

- MOVED: the slot has a new master (a migration ended, a failover): the slot map
  is read again;
- ASK: the slot is migrating and the keys are not on the source: the next round
  sends ASKING and the script to the target;
- TRYAGAIN: the slot is migrating and the keys are split between the two nodes
  (a script with a fresh batch marker always is): wait a little, send again;
- NOSCRIPT: a node that never saw the script (a promoted replica): load it there.

Nothing else is retried here; the recorder keeps a batch whose apply raised and
sends it again under the same id.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    TryAgainError,
)

from pullstats_middleware.store.base import StoreUnavailable
from pullstats_middleware.store.redis_records import FAILURES

if TYPE_CHECKING:
    from redis.cluster import ClusterNode, RedisCluster

_ROUNDS = 60  # with the pauses below, about 15 s of a slot in migration
_PAUSE_FIRST, _PAUSE_MAX = 0.01, 0.5


class LuaScript:
    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


@dataclass(slots=True)
class SlotCall:
    script: LuaScript
    keys: list[str]  # all in one slot
    args: list[Any]


class NotAcknowledged(StoreUnavailable):
    """The master applied writes that fewer replicas than asked acknowledged in time."""


class SlotCaller:
    def __init__(
        self,
        client: Callable[[], RedisCluster],
        *,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self._client = client  # the store's, connected at first use
        self.wait_replicas = wait_replicas
        self.wait_ms = max(1, int(wait_timeout * 1000))
        # What the cluster answered besides replies: the tests check a fault happened.
        self.redirects: Counter[str] = Counter()
        self.unacknowledged = 0  # pipelines whose writes too few replicas acknowledged

    def run(self, calls: list[SlotCall], *, wait: bool = False, partial: bool = False) -> list[Any]:
        """Each call's reply, in order. `wait`: the calls write, and with wait_replicas
        set each master's writes must reach that many replicas (else NotAcknowledged).
        A master that cannot answer fails its calls; the others' calls go on, then the
        first failure is raised, or with `partial` is each failed call's reply."""
        replies: list[Any] = [None] * len(calls)
        asked: dict[int, tuple[str, int]] = {}  # call -> the node an ASK named
        todo = list(range(len(calls)))
        pause = _PAUSE_FIRST
        failed: list[StoreUnavailable] = []  # nodes that could not answer: raised at the end
        for _ in range(_ROUNDS):
            again: list[int] = []
            refresh = False
            for node, indexes in self._by_node(calls, todo, asked).values():
                try:
                    answers = self._send(node, [calls[i] for i in indexes], indexes, asked, wait)
                except StoreUnavailable as exc:
                    failed.append(exc)
                    for i in indexes:
                        replies[i] = exc
                    continue
                for i, answer in zip(indexes, answers, strict=True):
                    asked.pop(i, None)
                    if isinstance(answer, MovedError):
                        self.redirects["MOVED"] += 1
                        refresh = True
                    elif isinstance(answer, AskError):
                        self.redirects["ASK"] += 1
                        asked[i] = (answer.host, answer.port)
                    elif isinstance(answer, TryAgainError):
                        self.redirects["TRYAGAIN"] += 1
                    elif isinstance(answer, NoScriptError):
                        self.redirects["NOSCRIPT"] += 1
                        self._load(node, calls[i].script)
                    elif isinstance(answer, Exception):
                        replies[i] = StoreUnavailable(f"{type(answer).__name__}: {answer}")
                        failed.append(replies[i])
                        continue
                    else:
                        replies[i] = answer
                        continue
                    again.append(i)
            if not again:
                if failed and not partial:
                    raise failed[0]
                return replies
            if refresh:
                self._refresh()
            elif not asked.keys() >= set(again):  # a TRYAGAIN: give the migration time
                time.sleep(pause)
                pause = min(pause * 2, _PAUSE_MAX)
            todo = again
        still = StoreUnavailable(f"Redis Cluster still redirecting after {_ROUNDS} rounds")
        if not partial:
            raise still
        for i in todo:
            replies[i] = still
        return replies

    def _by_node(
        self, calls: list[SlotCall], todo: list[int], asked: dict[int, tuple[str, int]]
    ) -> dict[str, tuple[ClusterNode, list[int]]]:
        out: dict[str, tuple[ClusterNode, list[int]]] = {}
        try:
            for i in todo:
                node = None
                if i in asked:
                    node = self._node_at(*asked[i])
                    if node is None:  # a node the client does not know yet
                        self._refresh()
                        node = self._node_at(*asked[i])
                if node is None:
                    node = self._master_of(calls[i].keys[0])
                out.setdefault(node.name, (node, []))[1].append(i)
        except FAILURES as exc:  # no node serves the slot right now
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return out

    def _node_at(self, host: str, port: int) -> ClusterNode | None:
        return self.client.get_node(host=host, port=port)  # type: ignore[no-untyped-call,no-any-return]

    def _master_of(self, key: str) -> ClusterNode:
        return self.client.get_node_from_key(key)  # type: ignore[no-untyped-call,no-any-return]

    def _send(
        self,
        node: ClusterNode,
        calls: list[SlotCall],
        indexes: list[int],
        asked: dict[int, tuple[str, int]],
        wait: bool,
    ) -> list[Any]:
        """One pipeline to `node`: the calls (each after ASKING when an ASK sent it
        there), then WAIT; the calls' answers, errors included."""
        waits = wait and self.wait_replicas > 0
        scripts = []  # where each call's answer is among the pipeline's
        try:
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
            for i, call in zip(indexes, calls, strict=True):
                if i in asked:
                    pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
                scripts.append(len(pipe))
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            if waits:
                wait_for = ("WAIT", self.wait_replicas, self.wait_ms)
                pipe.execute_command(*wait_for)  # type: ignore[no-untyped-call]
            answers = pipe.execute(raise_on_error=False)
        except FAILURES as exc:  # the node is gone (a failover under way)
            self._refresh()
            raise StoreUnavailable(f"{node.name}: {type(exc).__name__}: {exc}") from exc
        replies = [answers[n] for n in scripts]
        if waits:
            acknowledged = answers[-1]
            wrote = any(not isinstance(reply, Exception) for reply in replies)
            if wrote and (isinstance(acknowledged, Exception) or acknowledged < self.wait_replicas):
                self.unacknowledged += 1
                raise NotAcknowledged(
                    f"{node.name} applied the writes but {acknowledged} of "
                    f"{self.wait_replicas} replica(s) acknowledged them within {self.wait_ms} ms"
                )
        return replies

    @property
    def client(self) -> RedisCluster:
        return self._client()

    def _load(self, node: ClusterNode, script: LuaScript) -> None:
        try:
            self.client.get_redis_connection(node).script_load(script.text)
        except FAILURES as exc:
            raise StoreUnavailable(f"{node.name}: {type(exc).__name__}: {exc}") from exc

    def _refresh(self) -> None:
        # the slot map, read again from whichever node answers; if none does, the
        # next attempt fails and the caller retries later
        with contextlib.suppress(*FAILURES):
            self.client.nodes_manager.initialize()
