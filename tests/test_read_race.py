"""A flush that claims and commits between a reader's Redis read and its SQL read.

The reader saw the pulls live in the store; by the time it reads SQL they are in
SQL too. Without the claim counter (claim.lua, pending.lua, durable/reads.py)
every read below would count them twice. Each test injects that flush at the
worst moment and asserts it happened: records were flushed and the store was
read again. Memory store, a real redis-server and a real Redis Cluster; SQLite
and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.durable import Flusher
from pullstats_middleware.durable.export import Selection, rows
from pullstats_middleware.store import RedisClusterStore, RedisStore
from pullstats_middleware.store.pending import ClaimStore, Pending, RecordKey

REPO, TAG = "org/app", "v1"
D1 = "sha256:" + "1" * 64
TODAY = dt.datetime.now(dt.timezone.utc).date()


@pytest.fixture(params=["memory", "redis", "cluster"])
def metrics(request: pytest.FixtureRequest, database_url: str) -> Iterator[PullMetrics]:
    redis: Any = None
    if request.param == "redis":
        redis = {"url": request.getfixturevalue("redis_server").url}
        request.getfixturevalue("real_redis")  # emptied
    elif request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        request.getfixturevalue("cluster_client")  # emptied
        nodes = [f"{node.host}:{node.port}" for node in cluster.running()]
        redis = json.dumps({"cluster": True, "startup_nodes": nodes})
    config = PullStatsConfig(
        enabled=True,
        redis=redis,
        database=database_url,
        flush_interval=3600.0,  # the test hands batches over itself
        embedded_flusher=False,  # and flushes at the moment it chooses
    )
    metrics = PullMetrics(config)
    yield metrics
    metrics.close()


@contextmanager
def flush_between_reads(metrics: PullMetrics) -> Iterator[None]:
    """After the store's next `pending` read (before the reader's SQL read), a whole
    flush: claim, commit, release. Asserts it moved records and that the store was read
    after it (what it holds, or which records it holds: an export asks that first); the
    exact count the caller asserts is what shows the reader read again."""
    store = cast(ClaimStore, metrics.store)
    assert metrics.database is not None
    flusher, pending, held = Flusher(store, metrics.database), store.pending, store.held
    flushed, reads_after = [], []

    def pending_then_flush(keys: list[RecordKey]) -> Pending:
        found = pending(keys)
        if flushed:
            reads_after.append("pending")
        else:
            flushed.append(flusher.flush())
        return found

    def held_again(kind: str, repository: str) -> set[str]:
        if flushed:
            reads_after.append("held")
        return held(kind, repository)

    store.pending, store.held = pending_then_flush, held_again  # type: ignore[method-assign]
    try:
        yield
    finally:
        del store.pending, store.held  # type: ignore[method-assign]
    assert flushed[0] >= 2  # the fault: the tag and the manifest moved to SQL
    assert reads_after  # and the store was read after it


def pull(metrics: PullMetrics, times: int) -> None:
    for _ in range(times):
        metrics.track_tag_pull(REPO, TAG, D1)
    assert metrics.flush(30)


def read_tag(metrics: PullMetrics) -> int:
    found = metrics.get_tag_statistics(REPO, TAG)
    assert found["manifest_pull_count"] == found["tag_pull_count"]
    return int(found["tag_pull_count"])


def read_listing(metrics: PullMetrics) -> int:
    (row,) = metrics.get_tags(REPO)
    return int(row["tag_pull_count"])


def read_history(metrics: PullMetrics) -> int:
    history = metrics.get_history("tag", REPO, TAG, TODAY, TODAY)
    return sum(day.pull_count for day in history.days)


def read_repository_history(metrics: PullMetrics) -> int:
    history = metrics.get_repository_history(REPO, TODAY, TODAY)
    assert sum(day.tag_pull_count for day in history.days) == history.days[-1].pull_count
    return history.days[-1].pull_count


def read_export(metrics: PullMetrics) -> int:
    assert metrics.database is not None
    store = metrics.store
    assert isinstance(store, (RedisStore, RedisClusterStore))
    (row,) = rows(metrics.database, Selection("tags", REPO), store)
    return int(row[2])


@pytest.mark.parametrize("read", [read_tag, read_listing, read_history, read_repository_history])
def test_a_flush_between_the_redis_and_the_sql_read_counts_nothing_twice(
    metrics: PullMetrics, read: Callable[[PullMetrics], int]
) -> None:
    race(metrics, read)


# The export reads Redis and SQL from its own process: a memory store is not there.
@pytest.mark.parametrize("metrics", ["redis", "cluster"], indirect=True)
def test_an_export_counts_nothing_twice_either(metrics: PullMetrics) -> None:
    race(metrics, read_export)


def race(metrics: PullMetrics, read: Callable[[PullMetrics], int]) -> None:
    pull(metrics, 3)
    with flush_between_reads(metrics):
        assert read(metrics) == 3
    pull(metrics, 2)  # SQL holds 3: the same again, on top of it
    with flush_between_reads(metrics):
        assert read(metrics) == 5
    assert read(metrics) == 5  # and at rest
