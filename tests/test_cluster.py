"""Redis Cluster (docs/design.md, "Redis Cluster"), against a real cluster of three
masters: the settings, where keys live, that scripts touch only the keys they are
given, attribution across processes, and exact counts through both adapters.

Slot migrations are in test_cluster_migration.py, failovers in test_cluster_failover.py.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from pullstats_middleware import ConfigError, PullMetrics, PullStatsConfig, RedisSettings
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.store import (
    Batch,
    DigestFetch,
    IndexChildren,
    ManifestDelta,
    Push,
    RedisClusterStore,
    Resolution,
    TagDelta,
    iso_date,
)
from tests.apps import Driver, make_driver
from tests.e2e.services import free_port
from tests.redis_cluster import LocalCluster, key_slot

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
T0 = 1_725_790_500.0


def cluster_config(cluster: LocalCluster, **settings: Any) -> PullStatsConfig:
    redis = {"cluster": True, "startup_nodes": cluster.startup_nodes, "socket_timeout": 5}
    return PullStatsConfig(enabled=True, redis=redis, **{"flush_interval": 3600.0, **settings})


def apply(store: RedisClusterStore, *items: Any, origin: str = "process-1") -> list[str]:
    batch = Batch(uuid.uuid4().hex, origin)
    for item in items:
        kind = {TagDelta: "tags", ManifestDelta: "manifests", Push: "pushes"}.get(type(item))
        kind = kind or ("indexes" if isinstance(item, IndexChildren) else "attribution_events")
        getattr(batch, kind).append(item)
    return store.apply(batch, window=30.0, skew=1.0)


# -- settings ----------------------------------------------------------------------------


def test_cluster_settings_parse_and_validate() -> None:
    value = {"cluster": True, "startup_nodes": ["10.0.0.1:7000", ["10.0.0.2", 7001]]}
    settings = PullStatsConfig(redis={**value, "password": "pw", "wait_replicas": 1}).redis
    assert settings == RedisSettings(
        cluster=True,
        startup_nodes=(("10.0.0.1", 7000), ("10.0.0.2", 7001)),
        password="pw",
        wait_replicas=1,
    )
    assert settings.describe() == "redis-cluster://10.0.0.1:7000,10.0.0.2:7001"
    env = PullStatsConfig.from_env(
        {"PULL_METRICS_REDIS": '{"cluster": "true", "startup_nodes": "a:1,b:2", "ssl": true}'}
    )
    assert env.redis is not None and env.redis.startup_nodes == (("a", 1), ("b", 2))
    assert env.redis.describe() == "rediss-cluster://a:1,b:2"
    nodes = {"startup_nodes": ["a:1"]}
    for bad, message in [
        ({"cluster": True}, "a cluster needs startup_nodes"),
        (nodes, 'startup_nodes is for Redis Cluster: add "cluster": true'),
        ({"wait_replicas": 1}, "wait_replicas is for Redis Cluster"),
        ({"cluster": True, "startup_nodes": ["a"]}, r"PULL_METRICS_REDIS.startup_nodes must"),
        ({"cluster": True, "startup_nodes": []}, "must name at least one host:port"),
        ({"cluster": True, **nodes, "url": "redis://h"}, "url name.* one server"),
        ({"cluster": True, **nodes, "sentinels": ["s:1"], "service_name": "m"}, "sentinels"),
        ({"cluster": True, **nodes, "host": "h"}, "host name.* one server"),
        ({"cluster": True, **nodes, "db": 2}, "db must be 0 with a cluster"),
        ({"cluster": True, **nodes, "wait_replicas": -1}, "wait_replicas must be an integer"),
        ({"cluster": "maybe", **nodes}, "cluster must be true or false"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PullStatsConfig(redis=bad)
    with pytest.raises(ConfigError, match=r"must not contain \{ or \} with a Redis Cluster"):
        PullStatsConfig(redis={"cluster": True, **nodes}, key_prefix="pm{x}")


def test_pullstats_says_in_one_line_that_it_cannot_reach_a_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pullstats_middleware.cli import main

    nodes = json.dumps({"cluster": True, "startup_nodes": [f"127.0.0.1:{free_port()}"]})
    argv = ["proxy", "--upstream", "http://127.0.0.1:5000", "--redis-url", nodes]
    code = main([*argv, "--no-upstream-check"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pullstats: error: ") and err.count("\n") == 1, err
    assert "cannot reach Redis at redis-cluster://127.0.0.1:" in err


def test_a_cluster_down_at_start_up_does_not_stop_the_app() -> None:
    """The client connects at first use: tracking goes on, flush says it could not."""
    config = PullStatsConfig(
        enabled=True, redis={"cluster": True, "startup_nodes": ["127.0.0.1:1"]}
    )
    metrics = PullMetrics(config)
    metrics.track_tag_pull("org/app", "v1", D1)
    assert not metrics.flush(0.5)
    assert metrics.recorder.dropped == 0
    metrics.close(timeout=0.1)


# -- where keys live, and which a script touches ----------------------------------------------


def test_every_key_of_a_repository_lives_in_its_slot(cluster_client: RedisCluster) -> None:
    store = RedisClusterStore(cluster_client, durable=True)
    repos = ["library/hello", "org/app", "team/manifests/tool"]
    for repo in repos:
        apply(
            store,
            TagDelta(repo, "v1", 2, iso_date(T0), D1),
            ManifestDelta(repo, D1, 2, iso_date(T0)),
            Push(repo, "v2", iso_date(T0), D2),
            IndexChildren(repo, D3, (D1, D2)),
            Resolution("c", repo, "v1", D3, T0),
            DigestFetch("d", repo, D1, T0),
        )
    keys = [k.decode() for k in cluster_client.keys(target_nodes=RedisCluster.ALL_NODES)]
    for repo in repos:
        mine = [key for key in keys if f"{{{repo}}}" in key]
        assert {key.split("/")[1] for key in mine} == {
            *("batch", "tag", "manifest", "index", "held", "resolution", "unclaimed")
        }
        assert {key_slot(key) for key in mine} == {key_slot(repo)}
    assert store.read_tag("org/app", "v1")[:3] == (2, iso_date(T0), D1)
    assert store.read_tag("org/app", "v2") == (0, None, D2, iso_date(T0))
    # one key outside any repository: the hint of which ones hold records to flush
    assert {k for k in keys if "{" not in k} == {"pull_metrics/dirty-repositories"}


def test_a_script_not_given_a_key_it_needs_writes_nothing(cluster_client: RedisCluster) -> None:
    """The plan pass: a GET whose HEAD was recorded elsewhere bumps a tag the GET does not
    know; the script names that key and writes nothing, the store calls again with it."""
    apply(RedisClusterStore(cluster_client), Resolution("c", "org/app", "v7", D1, T0))
    store = RedisClusterStore(cluster_client)  # another process: it never saw the HEAD
    batch = Batch(
        "only-once", "process-2", attribution_events=[DigestFetch("c", "org/app", D1, T0)]
    )
    keys, args = store.script_call(batch, "pull_metrics/batch/{org/app}/x", 30.0, 1.0, cluster=True)
    reply = cluster_client.eval(store.script.text, len(keys), *keys, *args)
    # the tag the HEAD named, and the repository's list of held records (the store
    # gives that one from the start)
    assert reply == [2, b"pull_metrics/tag/{org/app}/v7", b"pull_metrics/held/{org/app}"]
    assert not cluster_client.exists("pull_metrics/batch/{org/app}/x")  # nothing written
    assert cluster_client.exists("pull_metrics/resolution/{org/app}/" + _client("c") + "/" + D1)
    store.apply(batch, window=30.0, skew=1.0)
    store.apply(batch, window=30.0, skew=1.0)  # a re-send: a no-op
    assert store.calls_for_keys == 1
    assert store.read_tag("org/app", "v7").pull_count == 1


def _client(identity: str) -> str:
    from pullstats_middleware.store.redis_records import client_key

    return client_key(identity)


def test_scripts_touch_only_the_keys_they_are_given(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """Every command a script runs, on every master (MONITOR), names a key of its call."""
    from tests.monitor import ScriptWatch

    with ScriptWatch([n for n in redis_cluster.running() if n.role() == "master"]) as watch:
        for durable in (False, True):
            processes = [RedisClusterStore(cluster_client, durable=durable) for _ in range(2)]
            rng = random.Random(durable)
            for n in range(40):
                store = rng.choice(processes)
                repo, client = f"team{n % 4}/app", f"client-{n % 5}"
                apply(
                    store,
                    TagDelta(repo, "v1", 1, iso_date(T0 + n), D1),
                    ManifestDelta(repo, D1, 1, iso_date(T0 + n)),
                    Push(repo, f"v{n}", iso_date(T0 + n), D2),
                    IndexChildren(repo, D3, (D1, D2)),
                    rng.choice([Resolution(client, repo, "v1", rng.choice([D1, D3]), T0 + n)]),
                    DigestFetch(client, repo, rng.choice([D1, D2, D3]), T0 + n + 0.5),
                    origin=f"process-{processes.index(store)}",
                )
            if durable:
                from pullstats_middleware.store.pending import RecordKey

                keys = [RecordKey("tag", f"team{n}/app", "v1") for n in range(4)]
                processes[0].pending(keys)
                claim = processes[0].claim("claim-1", 3)
                assert claim.deltas
                processes[1].pending(keys)  # with a claim open it does not know of
                processes[1].held("tag", "team0/app")
                processes[0].release(claim.id)
                while processes[0].claim(uuid.uuid4().hex, 100).deltas:
                    pass
    assert watch.scripts > 100 and watch.commands > 1000  # they ran, and were watched
    assert watch.undeclared == []


# -- attribution across processes, and both adapters --------------------------------------------


def test_a_head_and_a_get_recorded_by_two_processes_pair(cluster_client: RedisCluster) -> None:
    head_side, get_side = RedisClusterStore(cluster_client), RedisClusterStore(cluster_client)
    apply(head_side, IndexChildren("r", D3, (D1, D2)), origin="a")
    for n, (digest, fetched) in enumerate([(D1, D1), (D3, D2), (D3, D3)]):
        client = f"client-{n}"
        apply(head_side, Resolution(client, "r", f"v{n}", digest, T0), origin="a")
        apply(get_side, DigestFetch(client, "r", fetched, T0 + 1), origin="b")
        apply(get_side, DigestFetch(client, "r", fetched, T0 + 2), origin="b")  # no second pair
    assert [head_side.read_tag("r", f"v{n}").pull_count for n in range(3)] == [1, 1, 1]
    assert get_side.calls_for_keys >= 3  # the GET side was told the tag and the group


@pytest.fixture
def many_repositories() -> MemoryRegistry:
    """Repositories on every master, and an index."""
    registry = MemoryRegistry()
    for n in range(12):
        registry.push_image(f"team{n}/app", "v1", f"layer {n}".encode())
    registry.push_index("library/multi", "latest", ["linux/amd64", "linux/arm64"])
    return registry


@pytest.fixture
def two_processes(
    kind: str, many_repositories: MemoryRegistry, redis_cluster: LocalCluster, cluster_client: Any
) -> Iterator[tuple[Driver, Driver]]:
    config = cluster_config(redis_cluster)
    pair = [make_driver(kind, many_repositories, config, PullMetrics(config)) for _ in range(2)]
    yield pair[0], pair[1]
    for driver in pair:
        assert driver.metrics is not None
        driver.metrics.close()


def test_pulls_through_both_adapters_are_exact(
    two_processes: tuple[Driver, Driver], redis_cluster: LocalCluster
) -> None:
    a, b = two_processes
    rng = random.Random(3)
    for n in range(12):
        path = f"/v2/team{n}/app/manifests/v1"
        for _ in range(n + 1):  # docker: a GET by tag
            assert rng.choice((a, b)).get(path).status == 200
        digest = a.head(path).headers["docker-content-digest"]
        for m in range(3):  # containerd: HEAD on one process, GET by digest on the other
            agent = f"containerd/{n}-{m}"
            head_on, get_on = rng.sample((a, b), 2)
            head_on.head(path, user_agent=agent)
            get_on.get(f"/v2/team{n}/app/manifests/{digest}", user_agent=agent)
            if m == 1:
                rng.choice((a, b)).flush()
    index = a.get("/v2/library/multi/manifests/latest").json()
    arm64 = index["manifests"][1]["digest"]
    a.flush()
    b.head("/v2/library/multi/manifests/latest", user_agent="docker/27")
    a.get(f"/v2/library/multi/manifests/{arm64}", user_agent="docker/27")
    for driver in (b, a):
        driver.flush()
    assert a.metrics is not None
    for n in range(12):
        stats = a.metrics.get_tag_statistics(f"team{n}/app", "v1")
        assert (stats["tag_pull_count"], stats["manifest_pull_count"]) == (n + 4, n + 4)
    assert a.metrics.get_tag_statistics("library/multi", "latest")["tag_pull_count"] == 2
    masters = {redis_cluster.master_of(key_slot(f"team{n}/app")).port for n in range(12)}
    assert len(masters) == 3  # the pulls went to every master
