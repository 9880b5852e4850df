"""A repository's pulls per day: its manifests' pulls (every manifest GET), its tags'
pulls apart, and the union of its pullers, from SQL and what the store still holds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.durable import Database, Flusher, daily, repository_daily
from pullstats_middleware.store import Batch, ManifestDelta, MemoryStore, RedisStore, TagDelta
from pullstats_middleware.store.pending import RecordKey
from tests.apps import Driver, make_driver
from tests.e2e.services import RedisServer

HISTORY = "/api/v1/repository/library/multi/pull_statistics/history"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


@pytest.fixture(params=["memory", "sqlite"])
def driver(
    request: pytest.FixtureRequest, kind: str, registry: MemoryRegistry, tmp_path: Path
) -> Iterator[Driver]:
    database = None
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'history.db'}"
        Database(database).upgrade()
    config = PullStatsConfig(
        enabled=True, flush_interval=0.05, database=database, embedded_flusher=False
    )
    metrics = PullMetrics(config, store=MemoryStore())
    yield make_driver(kind, registry, config, metrics)
    metrics.close()


def flush_to_sql(driver: Driver) -> None:
    metrics = driver.metrics
    assert metrics is not None and metrics.database is not None
    Flusher(metrics.store, metrics.database).flush()  # type: ignore[arg-type]


def test_a_repositorys_pulls_are_its_manifest_gets_and_its_pullers_their_union(
    driver: Driver, registry: MemoryRegistry
) -> None:
    if driver.metrics is None or driver.metrics.database is None:
        result = driver.get(HISTORY)
        assert result.status == 501 and "PULL_METRICS_DATABASE" in result.json()["detail"]
        return
    index = registry.repositories["library/multi"].tags["latest"]
    platform = next(d for d in registry.repositories["library/multi"].manifests if d != index)
    for agent in ("podman", "podman", "skopeo"):  # multi-arch: the index by tag, then a platform
        assert driver.get("/v2/library/multi/manifests/latest", user_agent=agent).status == 200
        assert driver.get(f"/v2/library/multi/manifests/{platform}", user_agent=agent).status == 200
    driver.get(f"/v2/library/multi/manifests/{index}", user_agent="crane")  # by digest
    driver.flush()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    expected = {"date": today, "pull_count": 7, "tag_pull_count": 3, "unique_pullers": 3}
    body = driver.get(HISTORY).json()
    assert body["repository"] == "library/multi" and body["end"] == today
    assert len(body["days"]) == 30 and body["days"][-1] == expected
    assert body["unique_pullers"] == 3
    flush_to_sql(driver)  # the same answer from SQL
    assert driver.get(HISTORY).json() == body
    driver.get("/v2/library/multi/manifests/latest", user_agent="ctr")  # and SQL + the store
    driver.flush()
    last = driver.get(f"{HISTORY}?start={today}").json()["days"]
    assert last == [{"date": today, "pull_count": 8, "tag_pull_count": 4, "unique_pullers": 4}]


@pytest.mark.parametrize(
    "query, detail",
    [
        ("start=2026-02-30", "start must be a date YYYY-MM-DD"),
        ("end=tomorrow", "end must be a date YYYY-MM-DD"),
        ("start=2026-11-28&end=2026-11-01", "is after end"),
        ("start=2020-01-01&end=2026-11-28", "at most 400 days"),
        ("sort=pull_count", "unknown query parameter 'sort'"),
        ("start", "malformed query string"),
    ],
)
def test_bad_repository_history_queries_are_400(driver: Driver, query: str, detail: str) -> None:
    result = driver.get(f"{HISTORY}?{query}")
    assert result.status == 400 and detail in result.json()["detail"]


def test_the_registry_decides_who_reads_a_repositorys_history(driver: Driver) -> None:
    """Its probe is the repository's tags/list, as the listing's."""
    assert driver.get("/api/v1/repository/private/app/pull_statistics/history").status == 401
    assert driver.get("/api/v1/repository/absent/app/pull_statistics/history").status == 404


def test_a_tag_history_route_wins_over_the_repository_history_route(client: Driver) -> None:
    """`…/x/tag/v1/pull_statistics/history` could be the history of repository `x/tag/v1`:
    it is read as the history of tag v1 of x (501 here: that route, without a database)."""
    result = client.get("/api/v1/repository/library/hello/tag/v1/pull_statistics/history")
    assert result.status == 501 and client.metrics is not None


# -- against a real Redis and SQLite / PostgreSQL -------------------------------


def test_repository_days_add_up_to_their_records_days_wherever_they_are(
    redis_server: RedisServer, real_redis: redis.Redis, database_url: str
) -> None:
    """Days in SQL, in a claim the worker has not committed, and live in Redis: each
    day of the repository is the sum of its manifests' days, its pullers their union."""
    store = RedisStore(redis.Redis.from_url(redis_server.url), durable=True)
    database = Database(database_url)
    day = {n: f"2026-11-{n:02d}" for n in (20, 21, 22)}

    def pulls(batch: str, when: str, clients: tuple[str, ...], **extra: Any) -> None:
        at = f"{when}T10:00:00Z"
        store.apply(
            Batch(
                batch,
                tags=[TagDelta("org/app", "v1", len(clients), at, D1, clients)],
                manifests=[
                    ManifestDelta("org/app", D1, len(clients), at, clients),  # what v1 served
                    ManifestDelta("org/app", D2, 2, at, ("robot",)),  # pulled by digest
                    *extra.get("more", []),
                ],
            ),
            window=10,
            skew=1,
        )

    pulls("b1", day[20], ("alice", "bob"))
    pulls("b2", day[21], ("alice",))
    Flusher(store, database).flush()  # those two days are in SQL now
    pulls("b3", day[21], ("carol",))
    assert store.claim("open-claim", 100).deltas  # claimed, not written: a worker died here
    elsewhere = ManifestDelta("other/app", D3, 5, f"{day[22]}T01:00:00Z")
    pulls("b4", day[22], ("alice", "dave"), more=[elsewhere])
    start, end = dt.date(2026, 11, 19), dt.date(2026, 11, 22)
    got = repository_daily(store, database, "org/app", start, end)
    manifests = [
        daily(store, database, RecordKey("manifest", "org/app", d), start, end) for d in (D1, D2)
    ]
    tag = daily(store, database, RecordKey("tag", "org/app", "v1"), start, end)
    for n, row in enumerate(got.days):
        assert row.pull_count == sum(m.days[n].pull_count for m in manifests)
        assert row.tag_pull_count == tag.days[n].pull_count
    assert [(r.date, r.pull_count, r.tag_pull_count, r.unique_pullers) for r in got.days] == [
        ("2026-11-19", 0, 0, 0),
        ("2026-11-20", 4, 2, 3),  # alice, bob (D1) and robot (D2)
        ("2026-11-21", 6, 2, 3),  # alice from SQL, carol from the open claim, robot
        ("2026-11-22", 4, 2, 3),  # live: alice, dave, robot; other/app not counted
    ]
    assert got.unique_pullers == 5  # alice, bob, carol, dave, robot
    database.close()
