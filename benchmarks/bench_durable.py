"""Figures of the durable store, each next to a baseline measured in the same run.

    python benchmarks/bench_durable.py [--keys 100000] [--pulls 1000000]   (as root or not)

Starts its own redis-server and PostgreSQL (and an SQLite file). Prints one table:
- flush throughput, key-deltas per second, Redis → SQLite and → PostgreSQL, against
  one upsert statement per key (same rows, same database, same run); with 3 unique
  pullers per key-delta; and again into rows that exist (what a busy registry's
  flushes mostly are), without and with the same pullers: all as the `pullstats
  flush` worker runs (its startup heap frozen, durable/flusher.py), and once as a
  flusher thread embedded in a server, whose heap is left alone;
- the seed routes' read with a database (SQL total + what Redis holds) against the
  Redis-only read, median of 2,000;
- Redis `used_memory` after `--pulls` pulls over `--keys` tags, before and after a flush.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from figures import print_table  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.durable import Database, Flusher
from pullstats_middleware.durable.flusher import freeze_startup_heap
from pullstats_middleware.durable.schema import tag_pulls
from pullstats_middleware.durable.writes import ROW_COLUMNS, table_rows, upsert_statement
from pullstats_middleware.puller import identity
from pullstats_middleware.store import Batch, ManifestDelta, RedisStore, TagDelta
from pullstats_middleware.store.order import TagOrder
from tests.e2e.services import RedisServer, temp_dir
from tests.postgres import PostgresServer

DATE = "2026-11-28T10:00:00Z"


def digest(i: int) -> str:
    return f"sha256:{i:064x}"


def fill(store: RedisStore, keys: int, pullers: int = 0) -> None:
    """`keys` key-deltas in Redis, half tags and half manifests, as the recorder writes them;
    each pulled by `pullers` clients (their unique pullers go to SQL too)."""
    half = keys // 2
    for start in range(0, half, 1000):
        batch = Batch(uuid.uuid4().hex)
        for i in range(start, min(start + 1000, half)):
            clients = tuple(identity(f"10.1.{i % 250}.{n}", "", "bench") for n in range(pullers))
            batch.tags.append(TagDelta("bench/app", f"t{i}", 3, DATE, digest(i), clients))
            batch.manifests.append(ManifestDelta("bench/app", digest(i), 3, DATE, clients))
        store.apply(batch, window=10.0, skew=1.0)


def fresh_database(url: str) -> Database:
    database = Database(url)
    database.upgrade()
    tables = ("tag_pulls", "manifest_pulls", "tag_daily", "manifest_daily", "flush_claims")
    with database.engine.begin() as connection:
        if database.dialect == "postgresql":  # no dead rows left for the next run to skip
            connection.exec_driver_sql(f"TRUNCATE {', '.join(tables)}")
        else:
            for table in tables:
                connection.exec_driver_sql(f"DELETE FROM {table}")
    return database


class OneUpsertPerKey(Database):
    """The baseline: the same flush, but one upsert statement per row, its values as
    parameters (what a flush written the obvious way does)."""

    def _add(self, connection: Any, deltas: Any) -> None:
        tables, _ = table_rows(deltas)
        for table, rows in tables:
            statement = upsert_statement(self.dialect, table)
            for row in rows:
                connection.execute(statement, dict(zip(ROW_COLUMNS[table], row, strict=True)))


def flush_rate(
    client: redis.Redis,
    url: str,
    keys: int,
    kind: type[Database] = Database,
    pullers: int = 0,
    again: bool = False,
) -> float:
    """Key-deltas per second moved into a fresh database; `again`: into rows that
    exist (the same keys flushed once before, untimed: each row an update)."""
    client.flushall()
    store = RedisStore(client, durable=True)
    fresh_database(url).close()
    if again:
        fill(store, keys, pullers)
        first = Database(url)
        Flusher(store, first).flush()
        first.close()
    fill(store, keys, pullers)
    database = kind(url)
    started = time.perf_counter()
    moved = Flusher(store, database).flush()
    seconds = time.perf_counter() - started
    with database.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(tag_pulls)).scalar()
    database.close()
    assert moved == keys, (moved, keys)
    return keys / seconds


def read_micros(metrics: PullMetrics, rounds: int = 2000) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        # as the route asks: with the digest the registry's probe named
        metrics.get_tag_statistics("bench/app", "t7", digest(7))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def listing_and_history(
    client: redis.Redis, redis_url: str, database_url: str
) -> list[tuple[str, str, str, str]]:
    """A repository of 10,000 tags with a year of daily history, all flushed to SQL."""
    import datetime as dt

    from pullstats_middleware.routes.history import date_range

    client.flushall()
    store = RedisStore(client, durable=True)
    today = dt.datetime.now(dt.timezone.utc).date()
    for first in range(0, 10_000, 1000):
        batch = Batch(uuid.uuid4().hex)
        for i in range(first, first + 1000):
            date = f"{today - dt.timedelta(days=i % 365)}T10:00:00Z"
            batch.tags.append(TagDelta("bench/many", f"t{i}", 1 + i % 7, date, digest(i)))
        store.apply(batch, window=10.0, skew=1.0)
    for day in range(365):  # one tag with a pull on every day of the year
        date = f"{today - dt.timedelta(days=day)}T10:00:00Z"
        pulls = [TagDelta("bench/many", "t0", 2, date, digest(0))]
        store.apply(Batch(uuid.uuid4().hex, tags=pulls), window=10.0, skew=1.0)
    database = fresh_database(database_url)
    Flusher(store, database).flush()
    if database.dialect == "postgresql":
        # What autovacuum does within a minute of such a load: without statistics the
        # planner takes 10,000 rows for a few and sorts them rather than read an index.
        with database.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    database.close()
    redis_settings: Any = {"url": redis_url}
    metrics = PullMetrics(
        PullStatsConfig(
            enabled=True, redis=redis_settings, database=database_url, embedded_flusher=False
        )
    )
    start, end = date_range(f"start={today - dt.timedelta(days=364)}&end={today}")

    def median_ms(call: Any, rounds: int) -> float:
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            call()
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1000

    registry = [f"t{i}" for i in range(10_000)] + [f"new{i}" for i in range(100)]
    for i in range(0, 10_000, 100):  # a few pulled since the last flush: held by Redis
        metrics.track_tag_pull("bench/many", f"t{i}", digest(i))
    assert metrics.flush(10)

    def page(names: list[str]) -> None:
        rows, more = metrics.get_tag_page("bench/many", names, TagOrder(), 100)
        assert len(rows) == 100 and more

    def every_row() -> None:  # the baseline: every tag merged, sorted in Python
        rows = metrics.get_tags("bench/many", registry)
        rows.sort(key=lambda r: (r["last_tag_pull_date"] or "", r["tag_name"]))
        assert len(rows[:100]) == 100

    history_ms = median_ms(lambda: metrics.get_history("tag", "bench/many", "t0", start, end), 50)
    page_ms = median_ms(lambda: page([]), 50)
    listed_ms = median_ms(lambda: page(registry), 50)
    every_ms = median_ms(every_row, 10)
    metrics.close()
    return [
        ("history, 365 days of one tag", f"{history_ms:.1f} ms", "", "≤ 10 ms"),
        ("listing page, 100 of 10,000 tags by last pull", f"{page_ms:.1f} ms",
         f"{every_ms:.1f} ms (every tag merged)", "≤ 10 ms"),
        ("  the same, with the registry's 10,100 names", f"{listed_ms:.1f} ms", "", "≤ 10 ms"),
    ]  # fmt: skip


def memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--pulls", type=int, default=1_000_000)
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    with RedisServer() as server, PostgresServer() as pg, temp_dir() as tmp:
        client = redis.Redis.from_url(server.url)
        sqlite_url = f"sqlite:///{tmp / 'bench.db'}"
        # A flusher thread embedded in a serving process leaves its host's heap alone;
        # `pullstats flush` freezes what it made at startup, and so does the rest.
        embedded = flush_rate(client, pg.url, args.keys)
        freeze_startup_heap()
        for name, url in (("SQLite", sqlite_url), ("PostgreSQL", pg.url)):
            ours = flush_rate(client, url, args.keys)
            base = flush_rate(client, url, args.keys, OneUpsertPerKey)
            rows.append((f"flush into {name}, key-deltas/s", f"{ours:,.0f}/s",
                         f"{base:,.0f}/s (one upsert per key)", f"x{ours / base:.1f}"))  # fmt: skip
            with_pullers = flush_rate(client, url, args.keys, pullers=3)
            rows.append(("  the same, 3 unique pullers per key-delta", f"{with_pullers:,.0f}/s",
                         "", ""))  # fmt: skip
            again = flush_rate(client, url, args.keys, again=True)
            again_pullers = flush_rate(client, url, args.keys, pullers=3, again=True)
            rows.append(("  again, into rows that exist (updates)", f"{again:,.0f}/s", "", ""))
            rows.append(("  again, with the same 3 pullers", f"{again_pullers:,.0f}/s", "", ""))
        rows.append(("  PostgreSQL, a flusher embedded in a server (heap not frozen)",
                     f"{embedded:,.0f}/s", "", ""))  # fmt: skip

        client.flushall()
        config: dict[str, Any] = {"enabled": True, "redis": {"url": server.url}}
        plain = PullMetrics(PullStatsConfig(**config))
        durable = PullMetrics(PullStatsConfig(**config, database=pg.url, embedded_flusher=False))
        for n in range(50):
            durable.track_tag_pull("bench/app", f"t{n}", digest(n))
        assert durable.flush(10)
        Flusher(durable.store, durable.database).flush()  # type: ignore[arg-type]
        for n in range(50):
            durable.track_tag_pull("bench/app", f"t{n}", digest(n))  # some in SQL, some in Redis
        assert durable.flush(10)
        plain_read, durable_read = read_micros(plain), read_micros(durable)
        rows.append(("seed tag route read, SQL + Redis", f"{durable_read:,.0f} µs",
                     f"{plain_read:,.0f} µs (Redis only)",
                     f"+{(durable_read - plain_read) / 1000:.2f} ms"))  # fmt: skip
        plain.close()
        durable.close()

        rows += listing_and_history(client, server.url, pg.url)

        client.flushall()
        metrics = PullMetrics(
            PullStatsConfig(
                **config, database=sqlite_url, embedded_flusher=False, buffer_max_keys=1_000_000
            )
        )
        empty = memory(client)
        for n in range(args.pulls):
            i, c = n % args.keys, n % 7919  # 7,919 clients: each pull of a tag by another
            client_id = identity(f"10.0.{c // 256}.{c % 256}", "", "bench")
            metrics.track_tag_pull("bench/app", f"t{i}", digest(i), client_id)
        assert metrics.flush(120)
        held = memory(client)
        Flusher(metrics.store, metrics.database).flush()  # type: ignore[arg-type]
        after = memory(client)
        label = f"Redis used_memory, {args.pulls:,} pulls of {args.keys:,} tags by 7,919 clients"
        rows.append((label,
                     f"{(held - empty) / 2**20:.1f} MiB held", f"{(after - empty) / 2**20:.2f} MiB "
                     "after a flush", f"-{(held - after) / 2**20:.1f} MiB"))  # fmt: skip
        metrics.close()
    header = ("figure", "ours", "baseline (same run)", "difference")
    print_table(header, rows)


if __name__ == "__main__":
    main()
