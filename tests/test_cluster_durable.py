"""The durable store on a Redis Cluster (docs/design.md, "Redis Cluster"): the flush
worker claims, settles and releases per repository, exactly once, and reads stay
whole; tests/test_durable.py's key cases, against a real cluster of three masters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
from redis.cluster import RedisCluster

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.durable import Database, Flusher
from pullstats_middleware.durable.schema import tag_pulls
from pullstats_middleware.store import RedisClusterStore
from tests.redis_cluster import LocalCluster

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
REPOS = [f"team{n}/app" for n in range(6)]  # on every master


def redis_json(cluster: LocalCluster) -> str:
    return json.dumps({"cluster": True, "startup_nodes": cluster.startup_nodes})


def metrics_for(cluster: LocalCluster, database_url: str) -> PullMetrics:
    config = PullStatsConfig(
        enabled=True,
        redis=redis_json(cluster),
        database=database_url,
        flush_interval=3600.0,  # the tests flush the recorder themselves
        embedded_flusher=False,  # and run the flush worker themselves
    )
    return PullMetrics(config)


def store_for(client: RedisCluster) -> RedisClusterStore:
    return RedisClusterStore(client, durable=True)


def total(metrics: PullMetrics) -> tuple[int, int]:
    """Pulls of the v1 tags, and of both manifests, over every repository."""
    tags = sum(metrics.get_tag_statistics(r, "v1")["tag_pull_count"] for r in REPOS)
    manifests = sum(
        metrics.get_manifest_statistics(r, d)["manifest_pull_count"]
        for r in REPOS
        for d in (D1, D2)
    )
    return tags, manifests


def live_keys(client: RedisCluster, family: str) -> list[bytes]:
    return list(client.keys(f"pull_metrics/{family}/*", target_nodes=RedisCluster.PRIMARIES))


def pull(metrics: PullMetrics, times: int) -> None:
    for n in range(times):
        metrics.track_tag_pull(REPOS[n % 6], "v1", D1 if n // 6 % 2 else D2)
    assert metrics.flush(30)


def test_flush_moves_counts_out_and_answers_stay_whole(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, database_url: str
) -> None:
    metrics = metrics_for(redis_cluster, database_url)
    pull(metrics, 30)
    assert total(metrics) == (30, 30)  # all in Redis
    flusher = Flusher(store_for(cluster_client), Database(database_url))
    assert flusher.flush() == 6 + 12  # a tag and two manifests per repository
    assert live_keys(cluster_client, "tag") == live_keys(cluster_client, "held") == []
    assert live_keys(cluster_client, "claims") == []
    assert total(metrics) == (30, 30)  # all in SQL
    pull(metrics, 12)
    assert total(metrics) == (42, 42)  # SQL plus Redis, at once
    rows = metrics.get_tags(REPOS[0])  # a listing: the held tag's value replaces SQL's
    assert [(r["tag_name"], r["tag_pull_count"]) for r in rows] == [("v1", 7)]
    metrics.close()


def test_a_claim_in_flight_is_counted_once_at_every_step(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, database_url: str
) -> None:
    metrics = metrics_for(redis_cluster, database_url)
    pull(metrics, 12)
    flusher = Flusher(store_for(cluster_client), Database(database_url))
    claim = flusher.claim()  # one repository's records
    assert {delta.key.repository for delta in claim.deltas} == {claim.deltas[0].key.repository}
    assert total(metrics) == (12, 12)  # claimed, not yet in SQL: counted from the claim
    assert flusher.write(claim)
    assert total(metrics) == (12, 12)  # in SQL, still claimed in Redis: counted once
    assert not flusher.write(claim)  # a second write of one claim changes nothing
    flusher.release(claim)
    assert total(metrics) == (12, 12)
    assert flusher.flush() > 0 and total(metrics) == (12, 12)
    metrics.close()


@pytest.mark.parametrize("step", ["claimed", "written", "committed", "released"])
def test_a_worker_killed_after_any_step_loses_and_doubles_nothing(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, database_url: str, step: str
) -> None:
    metrics = metrics_for(redis_cluster, database_url)
    pull(metrics, 30)
    killed = subprocess.run(
        [sys.executable, "-m", "tests.flush_steps", redis_json(redis_cluster), database_url, step],
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # the fault happened
    assert total(metrics)[0] == 30  # meanwhile
    Flusher(store_for(cluster_client), Database(database_url)).flush()  # a new worker
    assert total(metrics)[0] == 30
    assert live_keys(cluster_client, "claims") == live_keys(cluster_client, "tag") == []
    database = Database(database_url)
    with database.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.sum(tag_pulls.c.pull_count))).scalar() == 30
    database.close()
    metrics.close()


def test_a_repository_left_off_the_list_is_found_by_the_sweep(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, database_url: str
) -> None:
    """A writer killed between its script and its second note on the list."""
    metrics = metrics_for(redis_cluster, database_url)
    pull(metrics, 12)
    store = store_for(cluster_client)
    flusher = Flusher(store, Database(database_url))
    assert flusher.flush() == 18
    pull(metrics, 6)
    cluster_client.srem("pull_metrics/dirty-repositories", REPOS[0])  # the lost note
    assert flusher.flush() == 10  # the other five repositories
    assert cluster_client.exists("pull_metrics/held/{team0/app}")  # still there, still read
    assert total(metrics) == (18, 18)
    assert store.claims.sweep() == 1  # SCAN of every master finds it
    assert flusher.flush() == 2
    assert live_keys(cluster_client, "held") == [] and total(metrics) == (18, 18)
    metrics.close()


def test_two_workers_at_once_while_pulls_go_on(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, database_url: str
) -> None:
    command = [sys.executable, "-m", "pullstats_middleware.cli", "flush", "--interval", "0.01"]
    command += ["--redis-url", redis_json(redis_cluster), "--database", database_url]
    workers = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    metrics = metrics_for(redis_cluster, database_url)
    driven = 0

    def drive() -> None:
        nonlocal driven
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for n in range(60):
                metrics.track_tag_pull(REPOS[n % 6], f"t{n % 7}", D1)
                driven += 1
            metrics.flush(10)

    producer = threading.Thread(target=drive)
    producer.start()
    producer.join()
    assert metrics.flush(10)
    time.sleep(0.3)  # both workers are at work on what is left
    for worker in workers:
        assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
        worker.kill()  # mid-cycle, perhaps: the next worker settles it
        worker.wait(10)
    Flusher(store_for(cluster_client), Database(database_url)).flush()
    counted = sum(
        metrics.get_tag_statistics(repo, f"t{n}")["tag_pull_count"]
        for repo in REPOS
        for n in range(7)
    )
    assert driven > 600 and counted == driven
    assert live_keys(cluster_client, "tag") == live_keys(cluster_client, "claims") == []
    database = Database(database_url)
    with database.engine.connect() as connection:
        in_sql = connection.execute(sa.select(sa.func.sum(tag_pulls.c.pull_count))).scalar()
    assert in_sql == driven
    database.close()
    metrics.close()
