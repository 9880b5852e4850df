"""Watches what Lua scripts do on Redis nodes, through MONITOR.

Redis Cluster decides where a script may run (MOVED, ASK, TRYAGAIN) from the keys
it is given alone; a script that touches another key works on a quiet cluster and
goes wrong while a slot migrates. Redis 7.0 does not refuse such a key in the same
slot, so the tests look: every command a script runs must name a key of its call.
"""

from __future__ import annotations

import threading
import uuid
from types import TracebackType
from typing import Any

import redis
from redis.client import Monitor

from tests.redis_cluster import ClusterNode

# The commands our scripts run, all with their one key first.
KEYED = {
    *("GET", "SET", "DEL", "EXISTS", "EXPIRE", "HMGET", "HGET", "HSET", "HINCRBY"),
    *("HEXISTS", "HGETALL", "HKEYS", "SADD", "SREM", "SCARD", "SMEMBERS", "SPOP", "INCR"),
}
MULTI_KEY = {"DEL"}  # every argument a key


class ScriptWatch:
    def __init__(self, nodes: list[ClusterNode]) -> None:
        self.nodes = nodes
        self.lines: list[list[tuple[str, list[str]]]] = [[] for _ in nodes]
        self._token = uuid.uuid4().hex
        self._seen = [threading.Event() for _ in nodes]
        self._threads = [
            threading.Thread(target=self._watch, args=(node, lines, seen), daemon=True)
            for node, lines, seen in zip(nodes, self.lines, self._seen, strict=True)
        ]
        self._ready = threading.Barrier(len(nodes) + 1)
        self.scripts = self.commands = 0
        self.undeclared: list[tuple[str, list[str]]] = []

    def _watch(
        self, node: ClusterNode, lines: list[tuple[str, list[str]]], seen: threading.Event
    ) -> None:
        client = redis.Redis(host=node.host, port=node.port, socket_timeout=60, protocol=2)
        with client.monitor() as monitor:
            self._ready.wait()
            while True:
                source, args = _parse(monitor, monitor.connection.read_response())
                if [arg.upper() for arg in args] == ["ECHO", self._token.upper()]:
                    seen.set()  # the end mark: everything before it was seen
                    return
                lines.append((source, args))

    def __enter__(self) -> ScriptWatch:
        for thread in self._threads:
            thread.start()
        self._ready.wait(30)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for node, seen in zip(self.nodes, self._seen, strict=True):
            node.client().echo(self._token)
            assert seen.wait(60), f"MONITOR of {node.address} stopped"
        for thread in self._threads:
            thread.join(10)
        for lines in self.lines:
            self._check(lines)

    def _check(self, lines: list[tuple[str, list[str]]]) -> None:
        given: set[str] = set()
        for source, args in lines:
            if source != "lua":
                if args and args[0].upper() in ("EVALSHA", "EVAL"):
                    self.scripts += 1
                    given = set(args[3 : 3 + int(args[2])])
                continue
            self.commands += 1
            named = args[1:] if args[0].upper() in MULTI_KEY else args[1:2]
            if args[0].upper() not in KEYED or not set(named) <= given:
                self.undeclared.append((args[0], named))


def _parse(monitor: Monitor, raw: Any) -> tuple[str, list[str]]:
    """(`lua` or the client's address, the command's arguments)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    _, data = text.split(" ", 1)
    match = monitor.monitor_re.match(data)
    assert match is not None, text
    _, source, command = match.groups()
    args = [arg.replace('\\"', '"') for arg in monitor.command_re.findall(command)]
    return source, args
