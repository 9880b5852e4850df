"""SQL cuts the listing's pages: every page equals the page cut from all rows in Python,
whatever is flushed, still held, only in the registry, sorted how, after which cursor
(SQLite and a real PostgreSQL, one of whose databases sorts text as English does)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.durable import Database, Flusher
from pullstats_middleware.store import Batch, MemoryStore, Push, TagDelta
from pullstats_middleware.store.order import SORTS, TagOrder
from tests.conftest import new_postgres_database

DATES = [None, "2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-03T10:00:00Z"]
DIGEST = "sha256:" + "a" * 64
D = DATES[1]
# Names whose order by code point (Python's, the cursor's) is not English order: upper
# case before lower, '-' < '.' < digits < '_' (ICU's en-US: a < A < a_b < a-b < ab).
NAMES = ["a", "A", "a_b", "a-b", "a.b", "ab", "a1", "B", "b", "Z9", "_x", "z"]
REGISTRY_ONLY = ["New", "n-ew", "new"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "postgresql-icu"])
def metrics(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PullMetrics]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('pages') / 'pages.db'}"
    else:
        icu = request.param == "postgresql-icu"
        url = new_postgres_database(request.getfixturevalue("postgres"), icu=icu)
    Database(url).upgrade()
    config = PullStatsConfig(enabled=True, database=url, embedded_flusher=False)
    one = PullMetrics(config, store=MemoryStore(durable=True))
    yield one
    one.close()


TAG = st.tuples(
    st.integers(0, 3),  # pulls flushed to SQL
    st.sampled_from(DATES[1:]),
    st.integers(0, 2),  # pulls after the flush, still held by the store
    st.sampled_from(DATES[1:]),
    st.sampled_from(DATES),  # a push
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
# Two held tags first in SQL's order move behind two that SQL has further down:
# a page cut from SQL's first limit + 1 rows alone would miss t3.
@example(
    tags=[(1, D, 2, D, None), (1, D, 2, D, None), (2, D, 0, D, None), (2, D, 0, D, None)],
    registry_only=0, sort="pull_count", descending=False, limit=2, cursor_at=12,
    before=None, since=None,
)  # fmt: skip
@given(
    tags=st.lists(TAG, min_size=0, max_size=12),
    registry_only=st.integers(0, 3),
    sort=st.sampled_from(sorted(SORTS)),
    descending=st.booleans(),
    limit=st.integers(1, 5),
    cursor_at=st.integers(0, 12),
    before=st.sampled_from([None, "2026-11-02", "2026-11-04"]),
    since=st.sampled_from([None, "2026-11-02"]),
)
def test_sql_pages_equal_python_pages(
    metrics: PullMetrics,
    tags: list[tuple[int, str, int, str, str | None]],
    registry_only: int,
    sort: str,
    descending: bool,
    limit: int,
    cursor_at: int,
    before: str | None,
    since: str | None,
) -> None:
    repository = f"r{uuid.uuid4().hex[:10]}"
    store, database = metrics.store, metrics.database
    assert isinstance(store, MemoryStore) and database is not None
    flushed, held, pushes = [], [], []
    for n, (early, early_date, late, late_date, pushed) in enumerate(tags):
        if early:
            flushed.append(TagDelta(repository, NAMES[n], early, early_date, DIGEST))
        if late:
            held.append(TagDelta(repository, NAMES[n], late, late_date, DIGEST))
        if pushed or not (early or late):
            pushes.append(Push(repository, NAMES[n], pushed or DATES[1], DIGEST))  # type: ignore[arg-type]
    store.apply(Batch(uuid.uuid4().hex, tags=flushed, pushes=pushes), window=10, skew=1)
    Flusher(store, database).flush()
    store.apply(Batch(uuid.uuid4().hex, tags=held), window=10, skew=1)
    registry = NAMES[: len(tags)] + REGISTRY_ONLY[:registry_only]

    field = SORTS[sort]
    everything = metrics.get_tags(repository, registry)
    order = TagOrder(field, descending, None, before, since)
    order.sort(everything)
    after = None
    if everything and cursor_at < len(everything):
        row = everything[cursor_at]
        after = (row[field], row["tag_name"])
    order = TagOrder(field, descending, after, before, since)
    expected: list[dict[str, Any]] = [row for row in everything if order.keeps(row)]
    page, more = metrics.get_tag_page(repository, registry, order, limit)
    assert page == expected[:limit]
    assert more == (len(expected) > limit)


def test_a_registry_of_more_names_than_an_in_list_holds(metrics: PullMetrics) -> None:
    """600 registry names (beyond the 500 asked by value, SQL's names are read whole):
    the pulled half with their counts, the never-pulled half with zeros, paged alike."""
    repository = f"r{uuid.uuid4().hex[:10]}"
    store, database = metrics.store, metrics.database
    assert isinstance(store, MemoryStore) and database is not None
    names = [f"n{n:03d}" for n in range(600)]
    pulled = [TagDelta(repository, name, 2, D, DIGEST) for name in names[::2]]
    store.apply(Batch(uuid.uuid4().hex, tags=pulled), window=10, skew=1)
    Flusher(store, database).flush()
    everything = metrics.get_tags(repository, names)
    assert len(everything) == 600
    assert sum(row["tag_pull_count"] for row in everything) == 600
    # Never pulled (a null date) first; by name, every other one.
    for field, counts in (
        ("last_tag_pull_date", [0] * 300 + [2] * 100),
        ("tag_name", [2, 0] * 200),
    ):
        order = TagOrder(field, False, None, None, None)
        order.sort(everything)
        page, more = metrics.get_tag_page(repository, names, order, 400)
        assert page == everything[:400] and more
        assert [row["tag_pull_count"] for row in page] == counts
