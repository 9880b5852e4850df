"""`pullstats export` against SQLite and a real PostgreSQL (and a real redis-server):
every row as SQL holds it, in each format parsed back; filters; the server-side
cursor; and rows merged with what Redis holds unflushed, equal to the routes."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from pullstats_middleware import PullMetrics, PullStatsConfig, export_output
from pullstats_middleware.cli import main
from pullstats_middleware.config import KEYS
from pullstats_middleware.durable import Database, Flusher
from pullstats_middleware.durable.export import COLUMNS, Selection, rows
from pullstats_middleware.durable.hyperloglog import Sketch
from pullstats_middleware.durable.schema import manifest_daily, manifest_pulls, tag_daily, tag_pulls
from pullstats_middleware.store import Batch, ManifestDelta, Push, RedisStore, TagDelta
from tests.e2e.services import RedisServer

REPOSITORIES = ("alpha/app", "beta/app", "beta/app/sub")  # beta/app/sub is not beta/app's
ISO_DAY = r"\d{4}-\d\d-\d\d"
ISO_UTC = ISO_DAY + r"T\d\d:\d\d:\d\dZ"
INTEGERS = {"tag_pull_count", "manifest_pull_count", "pull_count", "unique_pullers"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


def digest(i: int) -> str:
    return f"sha256:{i:064x}"


def fill(url: str) -> None:
    """120 tags and manifests over three repositories, nulls included, and 600 days."""
    tags, manifests, tag_days, manifest_days = [], [], [], []
    for r, repository in enumerate(REPOSITORIES):
        for i in range(40):
            pulled = f"2026-0{1 + i % 9}-{10 + i % 18}T{i % 24:02d}:05:09Z" if i % 5 else None
            pushed = f"2025-12-{1 + i % 28:02d}T08:00:00Z" if i % 3 == 0 else None
            named = digest(100 * r + i) if pulled or pushed else None
            tags.append((repository, f"v{i}", 3 * i if pulled else 0, pulled, named, pushed))
            manifests.append((repository, digest(100 * r + i), i + 1, pulled))
            for d in range(i % 10):
                pullers = Sketch().update(f"{n:016x}" for n in range(d)).to_bytes() if d else None
                tag_days.append((repository, f"v{i}", f"2026-03-{1 + 3 * d:02d}", d + 1, pullers))
                manifest_days.append(
                    (repository, digest(100 * r + i), f"2026-03-{2 + d:02d}", d, pullers)
                )
    database = Database(url)
    with database.engine.begin() as connection:
        for table, values in ((tag_pulls, tags), (manifest_pulls, manifests),
                              (tag_daily, tag_days), (manifest_daily, manifest_days)):  # fmt: skip
            names = [column.name for column in table.columns]
            connection.execute(table.insert(), [dict(zip(names, v, strict=True)) for v in values])
    database.close()


def in_sql(url: str, kind: str) -> list[dict[str, Any]]:
    """What SQL holds, as the export's columns."""
    database = Database(url)
    with database.engine.connect() as connection:
        if kind == "history":  # the sketch of pullers as its estimate
            found = [(r, "tag", *x, Sketch.from_bytes(p).estimate())
                     for r, *x, p in connection.execute(sa.select(tag_daily))]  # fmt: skip
            found += [(r, "manifest", *x, Sketch.from_bytes(p).estimate())
                      for r, *x, p in connection.execute(sa.select(manifest_daily))]  # fmt: skip
        else:
            found = [tuple(row) for row in connection.execute(sa.select(
                tag_pulls if kind == "tags" else manifest_pulls))]  # fmt: skip
    database.close()
    return [dict(zip(COLUMNS[kind], row, strict=True)) for row in found]


def export(tmp_path: Path, fmt: str, *flags: str) -> list[dict[str, Any]]:
    """Run `pullstats export` into a file and parse it back with the standard library."""
    target = tmp_path / f"out-{uuid.uuid4().hex[:6]}.{fmt}"
    assert main(["export", *flags, "--format", fmt, "--output", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    if fmt == "json":
        return list(json.loads(text))
    if fmt == "ndjson":
        lines = text.split("\n")
        assert lines[-1] == ""  # one object a line, each line ended
        return [json.loads(line) for line in lines[:-1]]
    with target.open(newline="", encoding="utf-8") as f:
        parsed = list(csv.reader(f))
    header, body = parsed[0], parsed[1:]
    return [
        {k: (int(v) if k in INTEGERS else v or None) for k, v in zip(header, row, strict=True)}
        for row in body
    ]


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: repr(list(row.values())))


@pytest.mark.parametrize("kind", ["tags", "manifests", "history"])
@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_every_row_is_exported_as_sql_holds_it(
    database_url: str, tmp_path: Path, kind: str, fmt: str
) -> None:
    fill(database_url)
    exported = export(tmp_path, fmt, "--all", "--kind", kind, "--database", database_url)
    expected = in_sql(database_url, kind)
    assert len(expected) == {"tags": 120, "manifests": 120, "history": 1080}[kind]
    assert ordered(exported) == ordered(expected)
    # The documented columns, in order (for CSV: its header row).
    assert all(list(row) == list(COLUMNS[kind]) for row in exported)
    dates = [v for row in exported for k, v in row.items() if k.endswith("date") and v]
    assert dates and all(re.fullmatch(ISO_UTC if len(d) > 10 else ISO_DAY, d) for d in dates)


def test_filters_by_repository_and_days(database_url: str, tmp_path: Path) -> None:
    fill(database_url)
    where = ("--database", database_url)
    history = in_sql(database_url, "history")
    got = export(tmp_path, "ndjson", "--repository", "beta/app", "--kind", "history", *where)
    assert ordered(got) == ordered([r for r in history if r["repository"] == "beta/app"])
    span = ("--since", "2026-03-04", "--until", "2026-03-07")
    got = export(tmp_path, "json", "--all", "--kind", "history", *span, *where)
    assert ordered(got) == ordered(
        [r for r in history if "2026-03-04" <= r["date"] <= "2026-03-07"]
    )
    tags = in_sql(database_url, "tags")
    got = export(tmp_path, "csv", "--all", "--since", "2026-03-10", "--until", "2026-05-27", *where)
    expected = [
        t for t in tags if "2026-03-10" <= (t["last_tag_pull_date"] or "")[:10] <= "2026-05-27"
    ]
    assert ordered(got) == ordered(expected) and 0 < len(got) < len(tags)
    assert export(tmp_path, "json", "--repository", "nobody/here", *where) == []


def test_rows_stream_through_a_server_side_cursor(database_url: str) -> None:
    fill(database_url)
    database = Database(database_url)
    stream = rows(database, Selection("history"), yield_per=7)  # many fetches of 7 rows
    first = [next(stream), next(stream)]  # SQLAlchemy fetches 1 row, then 7 at a time
    if database.dialect == "postgresql":  # the export's session is fetching from a cursor
        with database.engine.connect() as other:
            queries = other.execute(sa.text("SELECT query FROM pg_stat_activity")).scalars()
            assert any(q.startswith("FETCH FORWARD 7 FROM") for q in queries)
    got = [dict(zip(COLUMNS["history"], row, strict=True)) for row in [*first, *stream]]
    assert ordered(got) == ordered(in_sql(database_url, "history"))
    database.close()


# -- merged with what Redis still holds -------------------------------------------------

DAY1, DAY2, DAY3 = "2026-11-26T09:00:00Z", "2026-11-27T10:00:00Z", "2026-11-28T23:59:59Z"


def pulls(*tags: tuple[str, str, int, str, str]) -> Batch:
    batch = Batch(uuid.uuid4().hex)
    for repository, tag, count, date, named in tags:
        batch.tags.append(TagDelta(repository, tag, count, date, named))
        batch.manifests.append(ManifestDelta(repository, named, count, date))
    return batch


def test_export_merges_what_redis_holds_as_the_routes_do(
    redis_server: RedisServer, real_redis: redis.Redis, database_url: str, tmp_path: Path
) -> None:
    store = RedisStore(redis.Redis.from_url(redis_server.url), durable=True)
    flusher = Flusher(store, Database(database_url))
    apply = lambda batch: store.apply(batch, window=10.0, skew=1.0)  # noqa: E731
    apply(pulls(("org/app", "v1", 3, DAY1, digest(1)), ("org/app", "v2", 2, DAY1, digest(2))))
    assert flusher.flush() == 4  # in SQL
    apply(pulls(("org/app", "v1", 2, DAY2, digest(1)), ("org/app", "v3", 1, DAY2, digest(3))))
    written = flusher.claim()
    assert flusher.write(written)  # committed, not yet released: counted once
    apply(pulls(("org/app", "v1", 1, DAY2, digest(1)), ("org/app", "v2", 1, DAY3, digest(4))))
    flusher.claim()  # claimed, not written: counted from the claim
    apply(pulls(("org/app", "v1", 4, DAY3, digest(1)), ("new/repo", "x", 1, DAY3, digest(9))))
    apply(Batch(uuid.uuid4().hex, pushes=[Push("org/app", "v4", DAY3, digest(5))]))  # live
    where = ("--redis-url", redis_server.url, "--database", database_url)
    config = PullStatsConfig(enabled=True, redis={"url": redis_server.url},
                             database=database_url, embedded_flusher=False)  # fmt: skip
    metrics = PullMetrics(config)
    routes = [{"repository": repository, **{k: row[k] for k in COLUMNS["tags"][1:]}}
              for repository in ("new/repo", "org/app")
              for row in metrics.get_tags(repository)]  # fmt: skip
    tags = export(tmp_path, "json", "--all", *where)
    assert ordered(tags) == ordered(routes)
    assert {t["tag_name"]: t["tag_pull_count"] for t in tags} == {
        "v1": 10, "v2": 3, "v3": 1, "v4": 0, "x": 1}  # fmt: skip
    one = export(tmp_path, "csv", "--repository", "org/app", "--since", "2026-11-28", *where)
    assert sorted(t["tag_name"] for t in one) == ["v1", "v2"]  # last pulled on DAY3 in Redis
    manifests = export(tmp_path, "ndjson", "--all", "--kind", "manifests", *where)
    for row in manifests:
        stats = metrics.get_manifest_statistics(row["repository"], row["manifest_digest"])
        assert row["manifest_pull_count"] == stats["manifest_pull_count"] > 0
        assert row["last_manifest_pull_date"] == stats["last_manifest_pull_date"]
    assert len(manifests) == 5
    history = export(tmp_path, "csv", "--all", "--kind", "history", *where)
    for row in history:
        days = metrics.get_history(row["kind"], row["repository"], row["name"],
                                   dt.date(2026, 11, 26), dt.date(2026, 11, 28))  # fmt: skip
        day = {d.date: d for d in days.days}[row["date"]]
        assert row["pull_count"] == day.pull_count > 0
        assert row["unique_pullers"] == day.unique_pullers
    assert sum(r["pull_count"] for r in history if r["kind"] == "tag") == 15
    sql_only = export(tmp_path, "json", "--all", "--sql-only", *where)
    assert {t["tag_name"]: t["tag_pull_count"] for t in sql_only} == {"v1": 5, "v2": 2, "v3": 1}
    flusher.flush()  # `pullstats flush --once`: then the database alone says the same
    assert ordered(export(tmp_path, "json", "--all", "--sql-only", *where)) == ordered(tags)
    assert real_redis.keys("pull_metrics/tag/*") == []
    metrics.close()


values = st.one_of(st.none(), st.text(), st.integers(), st.booleans(), st.floats(allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(values, st.text(), values), max_size=30), names=st.text())
def test_every_format_reads_back_what_was_written(
    rows: list[tuple[Any, str, Any]], names: str
) -> None:
    columns = (names, names + "%s", "c")
    for fmt in ("json", "ndjson"):
        out = io.StringIO()
        assert export_output.write_rows(out, fmt, columns, rows, chunk=7) == len(rows)
        text = out.getvalue()
        parsed = json.loads(text) if fmt == "json" else [json.loads(x) for x in text.splitlines()]
        assert parsed == [dict(zip(columns, row, strict=True)) for row in rows]
    out = io.StringIO(newline="")
    export_output.write_rows(out, "csv", columns, [(r[1], r[1], "") for r in rows], chunk=7)
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == [
        list(columns), *([r[1], r[1], ""] for r in rows)]  # fmt: skip


def test_an_export_reads_one_snapshot_while_the_flush_worker_writes(
    database_url: str,
) -> None:
    fill(database_url)
    database = Database(database_url)
    stream = rows(database, Selection("history"), yield_per=50)
    first = next(stream)  # reading tag_daily; manifest_daily comes next
    writer = Database(database_url)
    with writer.engine.begin() as connection:  # a flush commits meanwhile: not blocked
        late = {"repository": "zzz/late", "digest": digest(7), "day": "2026-03-01"}
        connection.execute(manifest_daily.insert(), [{**late, "pull_count": 1}])
    writer.close()
    got = [first, *stream]
    assert len(got) == 1080 and all(row[0] != "zzz/late" for row in got)  # not in its snapshot
    assert len(list(rows(database, Selection("history")))) == 1081  # the next export sees it
    database.close()
