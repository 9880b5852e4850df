"""Unique pullers: the HyperLogLog sketch, who counts as one puller, and the estimate
through a real Redis and SQL (SQLite and PostgreSQL) against the exact count."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from pullstats_middleware import (
    PullMetrics,
    PullStatsASGIMiddleware,
    PullStatsConfig,
    PullStatsMiddleware,
)
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.durable import Database, Flusher, daily
from pullstats_middleware.durable.hyperloglog import Sketch
from pullstats_middleware.durable.schema import tag_daily
from pullstats_middleware.puller import identity, puller_key
from pullstats_middleware.store import Batch, MemoryStore, RedisStore, StoreDataError, TagDelta
from pullstats_middleware.store.pending import RecordKey
from tests.apps import make_driver
from tests.e2e.services import RedisServer

D1 = "sha256:" + "1" * 64


def client(n: int) -> str:
    return identity(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "", "containerd/1.7")


def hashes(count: int, first: int = 0) -> list[str]:
    return [puller_key(client(n)) for n in range(first, first + count)]


def test_the_estimate_of_10000_distinct_clients_is_within_3_percent() -> None:
    estimate = Sketch().update(hashes(10_000)).estimate()
    print(f"10,000 distinct clients: estimate {estimate}")  # shown with pytest -s
    assert abs(estimate - 10_000) <= 300  # 3 %: about 4 standard errors (0.81 %)


def test_small_sets_are_counted_exactly_and_merging_is_idempotent() -> None:
    for count in (0, 1, 2, 17, 100):
        assert Sketch().update(hashes(count)).estimate() == count
    day1, day2 = Sketch().update(hashes(100)), Sketch().update(hashes(100, first=50))
    both = Sketch().merge(day1).merge(day2)
    assert both.estimate() == 150
    assert both.merge(day1).merge(both).estimate() == 150  # merging again changes nothing
    assert Sketch().update(hashes(100) * 3).estimate() == 100  # repeats too


@pytest.mark.parametrize("count", [3, 9000])  # stored sparse, then dense
def test_a_sketch_survives_bytes(count: int) -> None:
    one = Sketch().update(hashes(count))
    blob = one.to_bytes()
    assert blob[:1] == (b"s" if count < 100 else b"d")
    assert Sketch.from_bytes(blob).registers == one.registers


@pytest.mark.parametrize(
    "blob, detail",
    [
        (b"x123", "not a pullers sketch (4 bytes, kind b'x')"),
        (b"s\x00\x01", "not a pullers sketch"),
        (b"s\x00\x01\x63", "register out of range"),
        (b"s\xff\xff\x01", "register out of range"),
    ],
)
def test_a_damaged_sketch_is_a_precise_error(blob: bytes, detail: str) -> None:
    with pytest.raises(ValueError, match=detail.replace("(", r"\(").replace(")", r"\)")):
        Sketch.from_bytes(blob)


def bearer(subject: str, nonce: str) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"sub": subject, "n": nonce}).encode())
    return f"Bearer e30.{claims.decode().rstrip('=')}.sig"


def test_a_puller_is_address_user_and_agent_not_the_token() -> None:
    ua = "docker/24.0"
    first = puller_key(identity("10.0.0.1", bearer("alice", "1"), ua))
    assert puller_key(identity("10.0.0.1", bearer("alice", "2"), ua)) == first  # new token
    assert puller_key(identity("10.0.0.1", bearer("bob", "1"), ua)) != first
    assert puller_key(identity("10.0.0.2", bearer("alice", "1"), ua)) != first
    basic = "Basic " + base64.b64encode(b"alice:secret").decode()
    assert puller_key(identity("10.0.0.1", basic, ua)) == first  # the same user, Basic
    assert len(first) == 16 and int(first, 16) >= 0


def test_both_adapters_build_the_identity_puller_identity_names() -> None:
    """The ASGI adapter builds the identity inline (it is on every pull's path): it
    must stay the string puller.identity() makes, and the one the WSGI adapter makes."""
    config = PullStatsConfig(enabled=True, trusted_proxies="10.0.0.0/8")
    metrics = PullMetrics(config, store=MemoryStore())
    token = bearer("alice", "1")
    scope = {
        "client": ("10.0.0.9", 5000),
        "headers": [
            (b"user-agent", b"containerd/1.7 (r\xe9v)"),
            (b"authorization", token.encode()),
            (b"x-forwarded-for", b"192.0.2.7, 10.0.0.3"),
        ],
    }
    environ = {
        "REMOTE_ADDR": "10.0.0.9",
        "HTTP_USER_AGENT": "containerd/1.7 (r\xe9v)",
        "HTTP_AUTHORIZATION": token,
        "HTTP_X_FORWARDED_FOR": "192.0.2.7, 10.0.0.3",
    }
    expected = identity("192.0.2.7", token, "containerd/1.7 (r\xe9v)")
    try:
        assert PullStatsASGIMiddleware(None, metrics=metrics)._identity(scope) == expected
        assert PullStatsMiddleware(None, metrics=metrics)._identity(environ) == expected
        assert PullStatsASGIMiddleware(None, metrics=metrics)._identity({}) == identity("", "", "")
    finally:
        metrics.close()


def test_10000_clients_through_redis_and_sql_against_the_exact_count(
    redis_server: RedisServer, real_redis: redis.Redis, database_url: str
) -> None:
    config = PullStatsConfig(
        enabled=True,
        redis={"url": redis_server.url},
        database=database_url,
        flush_interval=3600.0,
        embedded_flusher=False,
    )
    metrics = PullMetrics(config)
    database = Database(database_url)
    flusher = Flusher(RedisStore(real_redis, durable=True), database)
    today = dt.datetime.now(dt.timezone.utc).date()
    try:
        for n in range(10_000):
            metrics.track_tag_pull("org/app", "v1", D1, client(n))
            if n == 6_000:  # some in SQL, the rest still in Redis: the answer merges both
                assert metrics.flush(30)
                assert flusher.flush() == 2
        assert metrics.flush(30)
        history = metrics.get_history("tag", "org/app", "v1", today, today)
        estimate = history.days[0].unique_pullers
        print(f"10,000 clients through Redis and SQL: estimate {estimate}")
        assert history.days[0].pull_count == 10_000
        assert abs(estimate - 10_000) <= 300 and history.unique_pullers == estimate
        for n in range(0, 10_000, 7):  # the same clients again: more pulls, no new pullers
            metrics.track_tag_pull("org/app", "v1", D1, client(n))
        assert metrics.flush(30)
        assert flusher.flush() == 2
        again = metrics.get_history("tag", "org/app", "v1", today, today).days[0]
        assert again.pull_count == 10_000 + len(range(0, 10_000, 7))
        assert again.unique_pullers == estimate  # all in SQL now, the same sketch
        manifest = metrics.get_history("manifest", "org/app", D1, today, today).days[0]
        assert manifest.unique_pullers == estimate
    finally:
        metrics.close()
        database.close()


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_unique_pullers_over_a_range_count_each_puller_once(
    kind: str, redis_server: RedisServer, real_redis: redis.Redis, database_url: str
) -> None:
    store = RedisStore(real_redis, durable=True) if kind == "redis" else MemoryStore(durable=True)
    clients = [client(n) for n in range(150)]
    batches = [
        TagDelta("org/app", "v1", 100, "2026-11-27T10:00:00Z", D1, tuple(clients[:100])),
        TagDelta("org/app", "v1", 100, "2026-11-28T10:00:00Z", D1, tuple(clients[50:])),
    ]
    database = Database(database_url)
    key, start, end = (
        RecordKey("tag", "org/app", "v1"),
        dt.date(2026, 11, 26),
        dt.date(2026, 11, 28),
    )
    try:
        store.apply(Batch("b1", tags=batches[:1]), window=10, skew=1)
        Flusher(store, database).flush()  # the first day in SQL, the second live
        store.apply(Batch("b2", tags=batches[1:]), window=10, skew=1)
        history = daily(store, database, key, start, end)
        assert [(d.date, d.pull_count, d.unique_pullers) for d in history.days] == [
            ("2026-11-26", 0, 0),
            ("2026-11-27", 100, 100),
            ("2026-11-28", 100, 100),
        ]
        assert history.unique_pullers == 150  # 50 pulled on both days
        Flusher(store, database).flush()
        assert daily(store, database, key, start, end) == history
    finally:
        database.close()


def test_a_day_s_sketch_grows_by_new_pullers_and_is_rewritten_only_then(
    database_url: str,
) -> None:
    """Flushes of one day row: its own pullers go in with the new row, pullers seen
    again leave the stored sketch unwritten, new ones are merged into it."""
    store, database = MemoryStore(durable=True), Database(database_url)
    rewrites: list[str] = []

    def count_rewrites(_c: object, _cur: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE tag_daily"):
            rewrites.append(statement)

    sa.event.listen(database.engine, "before_cursor_execute", count_rewrites)
    pull = TagDelta("org/app", "v1", 1, "2026-11-28T10:00:00Z", D1, ())

    def flush(*clients: int) -> bytes:
        clients_ = tuple(map(client, clients))
        store.apply(
            Batch(uuid.uuid4().hex, tags=[pull._replace(clients=clients_)]), window=10, skew=1
        )
        Flusher(store, database).flush()
        with database.engine.connect() as connection:
            stored: bytes = connection.scalar(sa.select(tag_daily.c.pullers))
        return stored

    def sketch(*clients: int) -> bytes:
        return Sketch().update(puller_key(client(n)) for n in clients).to_bytes()

    try:
        assert flush(1, 2) == sketch(1, 2)
        assert flush(2) == sketch(1, 2)
        assert flush(1, 2) == sketch(1, 2)
        written = len(rewrites)  # PostgreSQL: none yet; SQLite merges in its upsert
        assert flush(3) == sketch(1, 2, 3)
        assert flush() == sketch(1, 2, 3)  # a pull without a puller keeps the sketch
        if database.dialect == "postgresql":
            assert (written, len(rewrites)) == (0, 1)
        with database.engine.connect() as connection:
            assert connection.scalar(sa.select(tag_daily.c.pull_count)) == 5
    finally:
        database.close()


def test_a_damaged_sketch_in_sql_names_its_row_and_the_flush_goes_on(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, database = MemoryStore(durable=True), Database(database_url)
    key, day = RecordKey("tag", "org/app", "v1"), dt.date(2026, 11, 28)
    one = TagDelta("org/app", "v1", 1, "2026-11-28T10:00:00Z", D1, (client(1),))
    try:
        store.apply(Batch("b1", tags=[one]), window=10, skew=1)
        Flusher(store, database).flush()
        with database.engine.begin() as connection:
            connection.execute(tag_daily.update().values(pullers=b"\x01\x02"))
        with pytest.raises(StoreDataError, match=r"the pullers of \('tag', 'org/app', 'v1', "):
            daily(store, database, key, day, day)
        store.apply(Batch("b2", tags=[one._replace(clients=(client(2),))]), window=10, skew=1)
        Flusher(store, database).flush()  # the damaged sketch starts again, the count goes on
        assert "that day's unique pullers start again" in caplog.text
        assert daily(store, database, key, day, day).days[0][1:] == (2, 1)
    finally:
        database.close()


def test_paired_and_plain_pulls_both_count_their_puller(
    tmp_path: Path, kind: str, registry: MemoryRegistry
) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    Database(url).upgrade()
    config = PullStatsConfig(enabled=True, database=url, embedded_flusher=False)
    metrics = PullMetrics(config, store=MemoryStore(durable=True))
    driver = make_driver(kind, registry, config, metrics)
    try:
        digest = driver.head("/v2/library/hello/manifests/v1").headers["docker-content-digest"]
        driver.get(f"/v2/library/hello/manifests/{digest}")  # containerd: HEAD, GET by digest
        driver.peer = "10.0.0.2"
        driver.get("/v2/library/hello/manifests/v1")  # docker: GET by tag
        driver.get("/v2/library/hello/manifests/v1", user_agent="other/1.0")
        driver.flush()
        today = dt.datetime.now(dt.timezone.utc).date()
        day = metrics.get_history("tag", "library/hello", "v1", today, today).days[0]
        assert (day.pull_count, day.unique_pullers) == (3, 3)
    finally:
        metrics.close()


def test_history_older_than_history_days_is_deleted(database_url: str) -> None:
    store, database = MemoryStore(durable=True), Database(database_url)
    today = dt.datetime.now(dt.timezone.utc).date()
    old, kept = today - dt.timedelta(days=30), today - dt.timedelta(days=29)
    pulls = [
        TagDelta("org/app", "v1", 1, f"{day}T10:00:00Z", D1, (client(1),)) for day in (old, kept)
    ]
    key = RecordKey("tag", "org/app", "v1")
    try:
        store.apply(Batch("b1", tags=pulls), window=10, skew=1)
        flusher = Flusher(store, database, history_days=30)
        flusher.flush()  # flushes, then deletes the days before the last 30
        days = daily(store, database, key, old, kept).days
        assert [(d.date, d.pull_count) for d in days] == [(str(old), 0), (str(kept), 1)]
        assert daily(store, database, key, kept, kept).days[0].unique_pullers == 1
        with database.engine.connect() as connection:
            count = connection.execute(sa.select(sa.func.count()).select_from(tag_daily))
            assert count.scalar() == 1  # the manifest's day rows went the same way
        assert flusher.prune() == 0  # at most once an hour
    finally:
        database.close()
