"""Counts stay exact while Redis Cluster moves slots (docs/design.md, "Redis Cluster"):
a migration done by hand, step by step, and `redis-cli --cluster reshard` while pulls
go on, through both adapters, two processes sharing the cluster."""

from __future__ import annotations

import random
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.store import RedisClusterStore
from tests.apps import Driver, make_driver
from tests.redis_cluster import LocalCluster, key_slot, until


@pytest.fixture(scope="module")
def moving_cluster() -> Iterator[LocalCluster]:
    """A cluster of its own: these tests move its slots."""
    with LocalCluster(masters=3) as started:
        yield started


@pytest.fixture
def cluster(moving_cluster: LocalCluster) -> LocalCluster:
    for node in moving_cluster.running():
        node.client().flushall()
    return moving_cluster


def processes(
    kind: str, registry: MemoryRegistry, cluster: LocalCluster, **settings: object
) -> list[Driver]:
    redis = {"cluster": True, "startup_nodes": cluster.startup_nodes, "socket_timeout": 5}
    values: dict[str, object] = {"flush_interval": 3600.0, **settings}
    config = PullStatsConfig(enabled=True, redis=redis, **values)  # type: ignore[arg-type]
    return [make_driver(kind, registry, config, PullMetrics(config)) for _ in range(2)]


def redirects(drivers: list[Driver]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for driver in drivers:
        assert driver.metrics is not None and isinstance(driver.metrics.store, RedisClusterStore)
        seen.update(driver.metrics.store.calls.redirects)
    return seen


def pull(drivers: list[Driver], repository: str, rng: random.Random, agent: str) -> None:
    """One docker pull (GET by tag) and one containerd pull (HEAD on one process, GET by
    digest on the other): two tag pulls, two manifest pulls."""
    path = f"/v2/{repository}/manifests/v1"
    assert rng.choice(drivers).get(path).status == 200
    head_on, get_on = rng.sample(drivers, 2)
    digest = head_on.head(path, user_agent=agent).headers["docker-content-digest"]
    assert get_on.get(f"/v2/{repository}/manifests/{digest}", user_agent=agent).status == 200


def counts(driver: Driver, repository: str) -> tuple[int, int]:
    assert driver.metrics is not None
    stats = driver.metrics.get_tag_statistics(repository, "v1")
    return stats["tag_pull_count"], stats["manifest_pull_count"]


def test_counts_stay_exact_while_a_slot_migrates_step_by_step(
    kind: str, registry: MemoryRegistry, cluster: LocalCluster
) -> None:
    repository, rng = "library/hello", random.Random(1)
    slot = key_slot(repository)
    drivers = processes(kind, registry, cluster)
    a, b = drivers
    for n in range(5):
        pull(drivers, repository, rng, f"containerd/{n}")
    for driver in drivers:
        driver.flush()
    assert counts(a, repository) == (10, 10)
    source = cluster.master_of(slot)
    target = next(node for node in cluster.running() if node is not source)
    cluster.begin_migration(slot, target)
    for n in range(5, 10):
        pull(drivers, repository, rng, f"containerd/{n}")
    # the batches wait: a script with a new batch marker in a migrating slot is refused
    assert not a.metrics.flush(0.5)  # type: ignore[union-attr]
    until(lambda: redirects(drivers)["TRYAGAIN"] > 0, what="a TRYAGAIN")
    assert counts(b, repository) == (10, 10)  # reads go on meanwhile
    moved = cluster.move_keys(slot, source, target, 3)
    left = source.client().execute_command("CLUSTER COUNTKEYSINSLOT", slot)
    assert moved == 3 and left > 0  # the slot's keys are on both nodes now
    assert counts(b, repository) == (10, 10)  # single-key reads follow ASK
    for n in range(10, 15):
        pull(drivers, repository, rng, f"containerd/{n}")
    cluster.end_migration(slot, source, target)  # would fail (BUSYKEY) on a duplicate key
    assert cluster.master_of(slot) is target
    assert source.client().execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
    for driver in drivers:
        assert driver.metrics is not None and driver.metrics.flush(60)
    assert counts(a, repository) == counts(b, repository) == (30, 30)
    for driver in drivers:
        driver.metrics.close()  # type: ignore[union-attr]


def repositories_in(slots: set[int], count: int) -> list[str]:
    found = []
    for n in range(1_000_000):
        name = f"moving/app{n}"
        if key_slot(name) in slots:
            found.append(name)
            if len(found) == count:
                return found
    raise AssertionError("no names in those slots")


def test_counts_stay_exact_through_a_redis_cli_reshard(kind: str, cluster: LocalCluster) -> None:
    source = cluster.master_of(0) if cluster.master_of(0).role() == "master" else None
    assert source is not None
    slots = sorted(s for s, (port, _) in cluster.slot_map(source).items() if port == source.port)
    moving = set(slots[:100])  # redis-cli takes a source's slots from its lowest
    repositories = repositories_in(moving, 6)
    registry = MemoryRegistry()
    for repository in repositories:
        registry.push_image(repository, "v1", repository.encode())
    drivers = processes(kind, registry, cluster, flush_interval=0.05)
    target = next(node for node in cluster.running() if node is not source)
    driven: Counter[str] = Counter()
    stop = threading.Event()

    def drive() -> None:
        rng = random.Random(2)
        n = 0
        while not stop.is_set():
            repository = rng.choice(repositories)
            pull(drivers, repository, rng, f"containerd/{n}")
            driven[repository] += 2
            n += 1

    producer = threading.Thread(target=drive)
    producer.start()
    try:
        until(lambda: sum(driven.values()) > 100, what="pulls before the reshard")
        reshard = subprocess.run(
            [cluster.cli, "--cluster", "reshard", source.address,
             "--cluster-from", source.node_id(), "--cluster-to", target.node_id(),
             "--cluster-slots", str(len(moving)), "--cluster-yes"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        stop.set()
        producer.join()
    assert reshard.returncode == 0, reshard.stdout[-2000:] + reshard.stderr
    cluster.wait_converged()
    assert {cluster.master_of(slot).port for slot in moving} == {target.port}  # they moved
    for driver in drivers:
        assert driver.metrics is not None and driver.metrics.flush(60)
    for repository in repositories:
        assert counts(drivers[0], repository) == (driven[repository], driven[repository])
    seen = redirects(drivers)
    assert seen["MOVED"] > 0, seen  # the stores followed the slots to their new master
    for driver in drivers:
        driver.metrics.close()  # type: ignore[union-attr]
