"""A real Redis Cluster for the tests: redis-server processes with `--cluster-enabled yes`
on free ports, joined by `redis-cli --cluster create`, and the faults the tests inject
(a slot migrated by hand, a failover) with checks that they really happened.

Every wait polls the servers (`CLUSTER INFO`, `CLUSTER SLOTS`, `ROLE`) instead of
sleeping: the machine the tests run on may be slow.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import redis

from tests.e2e.services import RedisServer, free_port, require_binary, run_command

SLOTS = 16384


class ClusterNode(RedisServer):
    name = "redis-cluster"

    def __init__(self, node_timeout_ms: int) -> None:
        self.bus_port = free_port()  # the cluster bus: port + 10000 may be taken or too high
        self.node_timeout_ms = node_timeout_ms
        super().__init__()

    def _start_once(self) -> None:
        # A first start that lost the race for a port is retried (RedisServer.start) with
        # a new client port; the bus port may have been the one taken: a new one too. A
        # restart keeps both: the cluster knows the node by them.
        if not self._started_once:
            self.bus_port = free_port()
        super()._start_once()

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-port", str(self.bus_port),
        ]  # fmt: skip

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=10)

    def node_id(self) -> str:
        return str(self.client().execute_command("CLUSTER MYID").decode())

    def role(self) -> str:
        return str(self.client().execute_command("ROLE")[0].decode())


def until(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something true; Redis errors count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


class LocalCluster:
    """`masters` masters, each with `replicas` replicas, all on 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        self.cli = require_binary("redis-cli")
        self.nodes = [ClusterNode(node_timeout_ms) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        run_command(
            [self.cli, "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            timeout=120,
        )  # fmt: skip
        self.wait_converged()
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def startup_nodes(self) -> list[str]:
        return [node.address for node in self.nodes if node.running]

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def by_port(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    # -- what the cluster looks like -------------------------------------------------

    def slot_map(self, node: ClusterNode) -> dict[int, tuple[int, list[int]]]:
        """node's view: slot -> (master port, replica ports)."""
        out: dict[int, tuple[int, list[int]]] = {}
        for start, end, master, *replicas in node.client().execute_command("CLUSTER SLOTS"):
            for slot in range(start, end + 1):
                out[slot] = (int(master[1]), sorted(int(r[1]) for r in replicas))
        return out

    def master_of(self, slot: int) -> ClusterNode:
        return self.by_port(self.slot_map(self.running()[0])[slot][0])

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        me = master.node_id()
        for node in self.running():
            role = node.client().execute_command("ROLE")
            if node is not master and role[0] == b"slave":
                info = node.client().info("replication")
                if int(info["master_port"]) == master.port:
                    return node
        raise AssertionError(f"no replica of {master.address} ({me})")

    def converged(self) -> bool:
        """Every running node says ok, sees every slot covered, and all agree on who
        serves which slot; every replica's link to its master is up."""
        maps = []
        for node in self.running():
            fields = {k: str(v) for k, v in node.client().cluster("INFO").items()}
            if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != str(SLOTS):
                return False
            if fields.get("cluster_slots_pfail") != "0" or fields.get("cluster_slots_fail") != "0":
                return False
            replication = node.client().info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
            maps.append(self.slot_map(node))
        return all(m == maps[0] for m in maps) and len(maps[0]) == SLOTS

    def wait_converged(self, timeout: float = 120.0) -> None:
        until(self.converged, timeout, "cluster convergence")

    # -- faults ------------------------------------------------------------------------

    def begin_migration(self, slot: int, target: ClusterNode) -> ClusterNode:
        """The first half of a slot migration, by hand: the target imports, the source
        migrates; no key has moved yet. Returns the source."""
        source = self.master_of(slot)
        assert source is not target
        target.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id())
        source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id())
        return source

    def move_keys(self, slot: int, source: ClusterNode, target: ClusterNode, count: int) -> int:
        """MIGRATE up to `count` keys of `slot` from source to target; how many moved."""
        keys = source.client().execute_command("CLUSTER GETKEYSINSLOT", slot, count)
        if keys:
            source.client().execute_command(
                "MIGRATE", target.host, target.port, "", 0, 10000, "KEYS", *keys
            )
        return len(keys)

    def end_migration(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        """Move what is left, then give the slot to the target, on every master."""
        while self.move_keys(slot, source, target, 100):
            pass
        target_id = target.node_id()
        for node in (target, source, *self.running()):
            if node.role() == "master":
                node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        until(lambda: self.master_of(slot) is target, what=f"slot {slot} on its new node")
        self.wait_converged()


def key_slot(key: str) -> int:
    from redis.crc import key_slot as slot

    return int(slot(key.encode()))


def kill(node: ClusterNode) -> None:
    """SIGKILL: no shutdown, no last words to the replicas."""
    assert node.process is not None
    node.process.kill()
    node.process.wait(30)


def cut_off(master: ClusterNode, replica: ClusterNode) -> None:
    """Freeze the replica (SIGSTOP) and drop its link: from now on the master's writes
    reach no replica, not even a socket buffer. `resume` undoes the freeze."""
    until(lambda: replicated(master), what="the replica caught up")
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGSTOP)
    master.client().client_kill_filter(_type="replica")
    assert master.client().info("replication")["connected_slaves"] == 0


def resume(replica: ClusterNode) -> None:
    assert replica.pid is not None
    os.kill(replica.pid, signal.SIGCONT)


def replicated(master: ClusterNode) -> bool:
    """Every replica of `master` holds all it wrote."""
    info = master.client().info("replication")
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return bool(replicas) and all(r["offset"] == info["master_repl_offset"] for r in replicas)
