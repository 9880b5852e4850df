"""The repository listing: every tag, never-pulled ones included, sorted, filtered and
paged, through both adapters, with and without a database."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.durable import Database, Flusher
from pullstats_middleware.store import MemoryStore
from tests.apps import TAG_FIELDS, Driver, make_driver

ALICE = "Basic " + base64.b64encode(b"alice:wonderland").decode()
LISTING = "/api/v1/repository/team/app/pull_statistics"
SEVEN = [*TAG_FIELDS, "last_push_date"]


@pytest.fixture
def team(registry: MemoryRegistry) -> MemoryRegistry:
    for n in range(5):
        registry.push_image("team/app", f"t{n}", f"layer {n}".encode())
    return registry


@pytest.fixture(params=["memory", "sqlite"])
def driver(
    request: pytest.FixtureRequest, kind: str, team: MemoryRegistry, tmp_path: Path
) -> Iterator[Driver]:
    database = None
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'listing.db'}"
        Database(database).upgrade()
    config = PullStatsConfig(
        enabled=True, flush_interval=0.05, database=database, embedded_flusher=False
    )
    metrics = PullMetrics(config, store=MemoryStore())
    yield make_driver(kind, team, config, metrics)
    metrics.close()


def pull(driver: Driver, tag: str, times: int = 1) -> None:
    for _ in range(times):
        assert driver.get(f"/v2/team/app/manifests/{tag}").status == 200


def listing(driver: Driver, query: str = "", **headers: str) -> Any:
    return driver.get(LISTING + (f"?{query}" if query else ""), **headers)


def settle(driver: Driver) -> None:
    """Everything recorded is in the store, and with a database half of it in SQL."""
    driver.flush()
    metrics = driver.metrics
    assert metrics is not None
    if metrics.database is not None:
        Flusher(metrics.store, metrics.database).flush()  # type: ignore[arg-type]


def test_every_tag_is_listed_never_pulled_ones_with_zeros(driver: Driver) -> None:
    pull(driver, "t1", 3)
    pull(driver, "t3")
    settle(driver)
    pull(driver, "t3")  # still in the store only: counted at once
    driver.flush()
    body = listing(driver, "sort=tag_name").json()
    assert body["repository"] == "team/app" and body["next_cursor"] is None
    rows = {row["tag_name"]: row for row in body["tags"]}
    assert list(rows) == ["t0", "t1", "t2", "t3", "t4"]
    assert all(list(row) == SEVEN for row in rows.values())
    assert (rows["t1"]["tag_pull_count"], rows["t3"]["tag_pull_count"]) == (3, 2)
    assert rows["t0"]["tag_pull_count"] == 0 and rows["t0"]["last_tag_pull_date"] is None
    assert rows["t1"]["manifest_pull_count"] == 3


def test_least_recently_pulled_first_and_most_pulled_first(driver: Driver) -> None:
    pull(driver, "t2", 2)
    pull(driver, "t4", 5)
    settle(driver)
    stale = [r["tag_name"] for r in listing(driver).json()["tags"]]  # last_pull_date asc
    assert stale[:3] == ["t0", "t1", "t3"] and set(stale[3:]) == {"t2", "t4"}
    top = listing(driver, "sort=pull_count&order=desc&limit=2").json()
    assert [r["tag_name"] for r in top["tags"]] == ["t4", "t2"]
    before = listing(driver, "pulled_before=2999-01-01").json()["tags"]
    assert len(before) == 5  # nothing pulled since then; never-pulled tags included
    assert len(listing(driver, "pulled_before=2000-01-01").json()["tags"]) == 3  # only never
    assert {r["tag_name"] for r in listing(driver, "pulled_since=2000-01-01").json()["tags"]} == {
        "t2",
        "t4",
    }


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_cover_every_tag_once_even_while_counts_change(driver: Driver, order: str) -> None:
    pull(driver, "t0")
    settle(driver)
    seen: list[str] = []
    cursor = None
    while True:
        query = f"sort=tag_name&order={order}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = listing(driver, query).json()
        seen += [row["tag_name"] for row in body["tags"]]
        pull(driver, "t4")  # counts change between pages
        driver.flush()
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=order == "desc") and sorted(seen) == [
        f"t{n}" for n in range(5)
    ]


@pytest.mark.parametrize(
    "query, detail",
    [
        ("sort=size", "sort must be one of"),
        ("order=up", "order must be asc or desc"),
        ("limit=0", "limit must be a number from 1 to 1000"),
        ("limit=abc", "limit must be a number"),
        ("limit=%D9%A3", "limit must be a number"),  # an Arabic-Indic 3
        ("pulled_since=2026-W01-1", "pulled_since must be a date"),  # an ISO week date
        ("cursor=%21%21", "invalid cursor"),
        ("pulled_before=soon", "pulled_before must be a date"),
        ("colour=red", "unknown query parameter 'colour'"),
    ],
)
def test_bad_listing_queries_are_400(driver: Driver, query: str, detail: str) -> None:
    result = listing(driver, query)
    assert result.status == 400 and detail in result.json()["detail"]


def test_the_registry_decides_who_may_list(registry: MemoryRegistry, kind: str) -> None:
    config = PullStatsConfig(enabled=True)
    driver = make_driver(kind, registry, config, PullMetrics(config, store=MemoryStore()))
    path = "/api/v1/repository/private/app/pull_statistics"
    assert driver.get(path).status == 401  # the probe (tags/list) carried no credentials
    listed = driver.get(path, authorization=ALICE).json()["tags"]
    assert [row["tag_name"] for row in listed] == ["v1"]
    assert driver.get("/api/v1/repository/absent/app/pull_statistics").status == 404


def test_a_tag_route_wins_over_the_repository_route(client: Driver) -> None:
    """`…/x/tag/v1/pull_statistics` could be the listing of repository `x/tag/v1`; it is
    read as the statistics of tag v1 of repository x."""
    body = client.get("/api/v1/repository/library/hello/tag/v1/pull_statistics").json()
    assert body["tag_name"] == "v1" and "tags" not in body
