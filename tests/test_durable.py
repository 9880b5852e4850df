"""The durable store against SQLite and a real PostgreSQL, with a real redis-server:
migrations, flushes, real-time merged answers, and exactly-once whatever is killed when."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from alembic import command

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.durable import Database, Flusher, merged
from pullstats_middleware.durable.database import alembic_config
from pullstats_middleware.durable.schema import tag_daily, tag_pulls
from pullstats_middleware.store import (
    Batch,
    ManifestDelta,
    MemoryStore,
    Push,
    RedisStore,
    TagDelta,
)
from pullstats_middleware.store.base import StoreDataError
from pullstats_middleware.store.pending import RecordKey
from pullstats_middleware.store.redis_records import claimed_deltas
from tests.apps import Driver, make_driver
from tests.conftest import new_postgres_database
from tests.e2e.services import RedisServer
from tests.postgres import PostgresServer

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def metrics_for(redis_url: str, database_url: str) -> PullMetrics:
    config = PullStatsConfig(
        enabled=True,
        redis={"url": redis_url},
        database=database_url,
        flush_interval=3600.0,  # the tests flush the recorder themselves
        embedded_flusher=False,  # and run the flush worker themselves
    )
    return PullMetrics(config)


def store_for(url: str) -> RedisStore:
    return RedisStore(redis.Redis.from_url(url), durable=True)


def counts(metrics: PullMetrics) -> tuple[int, int]:
    tag = metrics.get_tag_statistics("org/app", "v1")
    return tag["tag_pull_count"], tag["manifest_pull_count"]


def test_migrations_create_the_schema_and_run_again(database_url: str) -> None:
    database = Database(database_url)
    database.upgrade()  # the fixture ran it once already: nothing to do, no error
    tables = set(sa.inspect(database.engine).get_table_names())
    assert {"tag_pulls", "manifest_pulls", "tag_daily", "manifest_daily"} <= tables
    assert {"flush_claims", "alembic_version"} <= tables
    database.close()


def test_postgresql_sorts_names_by_code_point_whatever_the_database_locale(
    postgres: PostgresServer,
) -> None:
    """Migration 0006 on a database created with English collation (ICU en-US): names
    sort as Python sorts them; downgraded, they sort as English again; rows stay."""
    database = Database(new_postgres_database(postgres, icu=True))
    database.upgrade()
    names = ["ab", "a-b", "a_b", "B", "a", "A"]
    rows = [{"repository": "r", "tag": name, "pull_count": 1} for name in names]
    with database.engine.begin() as connection:
        connection.execute(tag_pulls.insert(), rows)

    def order() -> list[str]:
        with database.engine.connect() as connection:
            query = sa.select(tag_pulls.c.tag).order_by(tag_pulls.c.tag)
            return list(connection.scalars(query))

    assert order() == sorted(names) == ["A", "B", "a", "a-b", "a_b", "ab"]
    with database.engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
    assert order() == ["a", "A", "a_b", "a-b", "ab", "B"]  # the locale's, as before
    database.upgrade()
    assert order() == sorted(names)
    database.close()


def test_flush_moves_counts_out_of_redis_and_answers_stay_whole(
    real_redis: redis.Redis, redis_server: RedisServer, database_url: str
) -> None:
    metrics = metrics_for(redis_server.url, database_url)
    for _ in range(5):
        metrics.track_tag_pull("org/app", "v1", D1)
    assert metrics.flush(10)
    assert counts(metrics) == (5, 5)  # all in Redis
    flusher = Flusher(store_for(redis_server.url), Database(database_url))
    assert flusher.flush() == 2  # the tag and the manifest
    assert real_redis.keys("pull_metrics/tag/*") == []  # Redis keeps only what is new
    assert real_redis.scard("pull_metrics/dirty") == 0
    assert counts(metrics) == (5, 5)  # all in SQL
    for _ in range(3):
        metrics.track_tag_pull("org/app", "v1", D1)
    assert metrics.flush(10)
    assert counts(metrics) == (8, 8)  # SQL plus Redis, at once
    real_redis.flushall()  # a Redis that loses its data loses only what was not flushed
    assert counts(metrics) == (5, 5)
    metrics.close()


def test_a_claim_in_flight_is_counted_once_at_every_step(
    real_redis: redis.Redis, redis_server: RedisServer, database_url: str
) -> None:
    metrics = metrics_for(redis_server.url, database_url)
    for _ in range(4):
        metrics.track_tag_pull("org/app", "v1", D1)
    assert metrics.flush(10)
    flusher = Flusher(store_for(redis_server.url), Database(database_url))
    claim = flusher.claim()
    assert len(claim.deltas) == 2 and real_redis.keys("pull_metrics/tag/*") == []
    assert counts(metrics) == (4, 4)  # claimed, not yet in SQL: counted from the claim
    assert flusher.write(claim)
    assert counts(metrics) == (4, 4)  # in SQL, still claimed in Redis: counted once
    assert not flusher.write(claim)  # a second write of one claim changes nothing
    flusher.release(claim)
    assert counts(metrics) == (4, 4)
    metrics.close()


def test_daily_counts_split_at_utc_midnight(
    redis_server: RedisServer, real_redis: redis.Redis, database_url: str
) -> None:
    store = store_for(redis_server.url)
    before, after = "2026-11-27T23:59:59Z", "2026-11-28T00:00:00Z"
    batch = Batch(
        "b1",
        tags=[TagDelta("org/app", "v1", 3, before, D1), TagDelta("org/app", "v1", 2, after, D2)],
        manifests=[ManifestDelta("org/app", D1, 3, before)],
    )
    store.apply(batch, window=10.0, skew=1.0)
    database = Database(database_url)
    Flusher(store, database).flush()
    with database.engine.connect() as connection:
        days = connection.execute(
            sa.select(tag_daily.c.day, tag_daily.c.pull_count).order_by(tag_daily.c.day)
        ).all()
        total = connection.execute(sa.select(tag_pulls)).one()
    assert [tuple(day) for day in days] == [("2026-11-27", 3), ("2026-11-28", 2)]
    assert (total.pull_count, total.last_pull_date, total.current_manifest_digest) == (
        5,
        after,
        D2,
    )
    database.close()


@pytest.mark.parametrize("step", ["claimed", "written", "committed", "released"])
def test_a_worker_killed_after_any_step_loses_and_doubles_nothing(
    real_redis: redis.Redis, redis_server: RedisServer, database_url: str, step: str
) -> None:
    metrics = metrics_for(redis_server.url, database_url)
    for n in range(30):
        metrics.track_tag_pull("org/app", "v1", D1 if n % 3 else D2)
    assert metrics.flush(10)
    killed = subprocess.run(
        [sys.executable, "-m", "tests.flush_steps", redis_server.url, database_url, step],
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # the fault happened
    assert metrics.get_tag_statistics("org/app", "v1")["tag_pull_count"] == 30  # meanwhile
    Flusher(store_for(redis_server.url), Database(database_url)).flush()  # a new worker
    assert metrics.get_tag_statistics("org/app", "v1")["tag_pull_count"] == 30
    assert real_redis.scard("pull_metrics/claims") == 0
    assert real_redis.keys("pull_metrics/tag/*") == []
    database = Database(database_url)
    with database.engine.connect() as connection:
        assert connection.execute(sa.select(tag_pulls.c.pull_count)).scalar() == 30
    database.close()
    metrics.close()


def test_two_workers_at_once_while_pulls_go_on(
    real_redis: redis.Redis, redis_server: RedisServer, database_url: str
) -> None:
    command = [sys.executable, "-m", "pullstats_middleware.cli", "flush", "--interval", "0.01"]
    command += ["--redis-url", redis_server.url, "--database", database_url]
    workers = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    metrics = metrics_for(redis_server.url, database_url)
    driven = 0

    def drive() -> None:
        nonlocal driven
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for n in range(50):
                metrics.track_tag_pull("org/app", f"t{n % 7}", D1)
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
    Flusher(store_for(redis_server.url), Database(database_url)).flush()
    total = sum(metrics.get_tag_statistics("org/app", f"t{n}")["tag_pull_count"] for n in range(7))
    assert driven > 1000 and total == driven
    assert real_redis.keys("pull_metrics/tag/*") == []
    metrics.close()


# -- the history routes ----------------------------------------------------------


@pytest.fixture
def history_driver(kind: str, registry: Any, tmp_path: Path) -> Iterator[Driver]:
    """A wrapped registry counting into the memory store, with an SQLite database."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    database = Database(url)
    database.upgrade()
    database.close()
    config = PullStatsConfig(
        enabled=True, database=url, embedded_flusher=False, flush_interval=0.05
    )
    metrics = PullMetrics(config, store=MemoryStore())
    yield make_driver(kind, registry, config, metrics)
    metrics.close()


def history(driver: Driver, query: str = "") -> Any:
    path = "/api/v1/repository/library/hello/tag/v1/pull_statistics/history"
    return driver.get(path + (f"?{query}" if query else ""))


def test_history_is_zero_filled_and_counts_today_before_and_after_a_flush(
    history_driver: Driver,
) -> None:
    today = datetime.now(timezone.utc).date()
    for _ in range(3):
        history_driver.get("/v2/library/hello/manifests/v1")
    history_driver.flush()
    body = history(history_driver).json()
    assert body["tag_name"] == "v1" and body["end"] == today.isoformat()
    assert len(body["days"]) == 30 and body["days"][0]["date"] == body["start"]
    assert body["days"][-1] == {"date": today.isoformat(), "pull_count": 3, "unique_pullers": 1}
    assert body["unique_pullers"] == 1  # one client, three pulls
    assert sum(day["pull_count"] for day in body["days"]) == 3
    metrics = history_driver.metrics
    assert metrics is not None and metrics.database is not None
    Flusher(metrics.store, metrics.database).flush()  # type: ignore[arg-type]
    history_driver.get("/v2/library/hello/manifests/v1")
    history_driver.flush()
    assert history(history_driver).json()["days"][-1]["pull_count"] == 4  # SQL 3 + store 1
    digest = history_driver.get("/v2/library/hello/manifests/v1").headers["docker-content-digest"]
    history_driver.flush()
    path = f"/api/v1/repository/library/hello/manifest/{digest}/pull_statistics/history"
    answer = history_driver.get(f"{path}?start={today}&end={today}").json()
    assert answer["manifest_digest"] == digest and answer["days"][0]["pull_count"] == 5


@pytest.mark.parametrize(
    "query, detail",
    [
        ("start=2026-13-01", "start must be a date YYYY-MM-DD"),
        ("end=yesterday", "end must be a date YYYY-MM-DD"),
        ("end=2026-W01-1", "end must be a date YYYY-MM-DD"),  # an ISO week date
        ("start=2026-11-28&end=2026-11-01", "is after end"),
        ("start=2020-01-01&end=2026-11-28", "at most 400 days"),
        ("days=7", "unknown query parameter 'days'"),
    ],
)
def test_bad_history_queries_are_400(history_driver: Driver, query: str, detail: str) -> None:
    result = history(history_driver, query)
    assert result.status == 400 and detail in result.json()["detail"]


@pytest.mark.parametrize(
    "query, first, days",
    [
        ("end=0001-01-01", "0001-01-01", 1),  # the default start fell before year 1: a 500
        ("end=0001-01-05", "0001-01-01", 5),
        ("start=9999-12-31&end=9999-12-31", "9999-12-31", 1),
    ],
)
def test_history_at_the_ends_of_the_calendar(
    history_driver: Driver, query: str, first: str, days: int
) -> None:
    result = history(history_driver, query)
    assert result.status == 200, result.body
    assert result.json()["start"] == first and len(result.json()["days"]) == days


def test_history_without_a_database_is_501(client: Driver) -> None:
    result = history(client)
    assert result.status == 501 and "PULL_METRICS_DATABASE" in result.json()["detail"]


def test_a_push_reaches_sql_and_the_newer_of_push_and_pull_names_the_tag(
    redis_server: RedisServer, real_redis: redis.Redis, database_url: str
) -> None:
    store = store_for(redis_server.url)
    pulled, pushed = "2026-11-27T10:00:00Z", "2026-11-28T09:00:00Z"
    store.apply(Batch("b1", tags=[TagDelta("org/app", "v1", 2, pulled, D1)]), window=10, skew=1)
    database = Database(database_url)
    Flusher(store, database).flush()
    store.apply(Batch("b2", pushes=[Push("org/app", "v1", pushed, D2)]), window=10, skew=1)
    key = RecordKey("tag", "org/app", "v1")
    assert merged(store, database, [key])[key] == (2, pulled, D2, pushed)  # SQL + Redis
    Flusher(store, database).flush()
    assert merged(store, database, [key])[key] == (2, pulled, D2, pushed)  # all in SQL
    with database.engine.connect() as connection:
        row = connection.execute(sa.select(tag_pulls)).one()
    assert (row.current_manifest_digest, row.last_push_date) == (D2, pushed)
    database.close()


def test_a_database_that_cannot_be_read_is_a_503(kind: str, registry: Any, tmp_path: Path) -> None:
    """Never a made-up zero, never a 500: the routes answer 503 with Retry-After."""
    url = f"sqlite:///{tmp_path / 'absent-dir' / 'pullstats.db'}"  # cannot be opened
    config = PullStatsConfig(enabled=True, database=url, embedded_flusher=False)
    metrics = PullMetrics(config, store=MemoryStore())
    driver = make_driver(kind, registry, config, metrics)
    for path in ("tag/v1/pull_statistics", "tag/v1/pull_statistics/history", "pull_statistics"):
        result = driver.get(f"/api/v1/repository/library/hello/{path}")
        assert result.status == 503, path
        assert result.headers["retry-after"] == "5"
    metrics.close()


def test_writes_in_one_transaction_each_add_their_own_rows_once(database_url: str) -> None:
    """PostgreSQL stages rows in a session table that only a commit empties: a second
    write in the same transaction must not add the first one's rows again."""
    from pullstats_middleware.durable.writes import add
    from pullstats_middleware.store.pending import Delta

    database = Database(database_url)
    date = "2026-11-28T10:00:00Z"
    deltas = [
        Delta(
            RecordKey("tag", "org/app", tag),
            2,
            date,
            D1,
            {"2026-11-28": 2},
            pullers={"2026-11-28": frozenset({tag.encode().hex().rjust(16, "0")})},
        )
        for tag in ("v1", "v2", "v3")
    ]
    with database.engine.begin() as connection:
        for delta in deltas:
            add(connection, database.dialect, [delta])
        add(connection, database.dialect, deltas)  # and all three again
    with database.engine.connect() as connection:
        counts = dict(connection.execute(sa.select(tag_pulls.c.tag, tag_pulls.c.pull_count)).all())
        days = connection.execute(sa.select(sa.func.sum(tag_daily.c.pull_count))).scalar()
    assert counts == {"v1": 4, "v2": 4, "v3": 4}
    assert days == 12
    history = merged(MemoryStore(durable=True), database, [RecordKey("tag", "org/app", "v2")])
    assert history[RecordKey("tag", "org/app", "v2")].pull_count == 4
    database.close()


def test_held_reads_the_dirty_set_and_finds_what_a_keyspace_scan_finds(
    real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """With a database, `held` scans the dirty set instead of every key: the same names,
    live and claimed, of this repository only (not of one below it or beside it)."""
    store = store_for(redis_server.url)
    date = "2026-11-28T10:00:00Z"
    for repository in ("org/app", "org/app/sub", "org/apple"):
        tags = [TagDelta(repository, f"v{n}", 1, date, D1) for n in range(30)]
        store.apply(Batch(f"b-{repository}", tags=tags), window=10.0, skew=1.0)
    claim = store.claim("c-1", 40)  # some records move into a claim hash
    assert len(claim.deltas) == 40
    real_redis.set("pull_metrics/batch/other", "1")  # keys that are not records
    real_redis.set("pull_metrics/tag/org/app-marker", "x")
    assert real_redis.dbsize() > real_redis.scard("pull_metrics/dirty")  # the scan differs
    found = store.held("tag", "org/app")
    store.durable = False  # the keyspace scan, for comparison
    assert store.held("tag", "org/app") == found == {f"v{n}" for n in range(30)}


@pytest.mark.parametrize("value", [b"1,2", b"{", b"[1]", b'{"a": 1}, {"b": 2}'])
def test_a_claim_value_that_is_not_one_json_object_names_its_claim(value: bytes) -> None:
    """The claim's values are parsed as one array: a value that is not exactly one
    object (it would shift every record after it) is an error naming the claim."""
    reply = [b"pull_metrics/tag/r/t", b'{"pull_count": "1"}', b"pull_metrics/tag/r/u", value]
    with pytest.raises(StoreDataError, match="claim c1 holds fields that are not JSON objects"):
        claimed_deltas(reply, "claim c1", lambda key, fields, where: (key, fields))
