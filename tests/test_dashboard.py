"""The dashboard page, through both adapters, with and without a database: the same
numbers as the JSON routes, every name escaped, a policy that allows no script.
(tests/e2e/test_dashboard_browser.py loads it in Chromium against a real registry.)"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import OCI_MANIFEST, MemoryRegistry
from pullstats_middleware.durable import Database
from pullstats_middleware.store import MemoryStore
from tests.apps import Driver, make_driver

PAGE = "/api/v1/pull_statistics/ui/team/app"
API = "/api/v1/repository/team/app"
HOSTILE = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "a&b'c"]


class Page(HTMLParser):
    """Elements with their attributes and the section they are in; text per element id."""

    VOID = frozenset({"meta", "link", "input", "br", "img", "hr"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str]] = []  # tag, attrs, section id
        self.texts: dict[str, str] = {}  # element id -> its text
        self._sections: list[str] = []
        self._open: list[tuple[str, str | None]] = []  # tag, id
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._sections.append(values.get("id", ""))
        self.elements.append((tag, values, self._sections[-1] if self._sections else ""))
        if "id" in values:
            self.texts[values["id"]] = ""
        if tag not in self.VOID:
            self._open.append((tag, values.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._sections.pop()
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, element in self._open:
            if element is not None:
                self.texts[element] += data

    def rows(self, section: str) -> list[str]:
        """The tags of a table's rows, in order."""
        return [v["data-tag"] for v in self.find("tr", section) if "data-tag" in v]

    def find(self, tag: str, section: str | None = None, **attrs: str) -> list[dict[str, str]]:
        return [
            values
            for name, values, where in self.elements
            if name == tag
            and (section is None or where == section)
            and all(values.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


@pytest.fixture(params=["memory", "sqlite"])
def driver(
    request: pytest.FixtureRequest, kind: str, registry: MemoryRegistry, tmp_path: Path
) -> Iterator[Driver]:
    for n in range(12):
        registry.push_image("team/app", f"t{n:02d}", f"layer {n}".encode())
    database = None
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'dashboard.db'}"
        Database(database).upgrade()
    config = PullStatsConfig(
        enabled=True,
        flush_interval=0.05,
        database=database,
        embedded_flusher=False,
        exclude=[{"user_agent": "^trivy/"}],
    )
    metrics = PullMetrics(config, store=MemoryStore())
    yield make_driver(kind, registry, config, metrics)
    metrics.close()


def pull(driver: Driver, tag: str, times: int, agent: str = "podman") -> None:
    for _ in range(times):
        assert driver.get(f"/v2/team/app/manifests/{tag}", user_agent=agent).status == 200


def page(driver: Driver, query: str = "") -> Page:
    result = driver.get(PAGE + (f"?{query}" if query else ""))
    assert result.status == 200, result.body
    assert result.headers["content-type"] == "text/html; charset=utf-8"
    return Page(result.body.decode())


def test_the_tables_and_the_health_are_the_json_routes_numbers(driver: Driver) -> None:
    pull(driver, "t03", 4)
    pull(driver, "t07", 2, agent="skopeo")
    pull(driver, "t01", 1)
    pull(driver, "t05", 1, agent="trivy/0.50")  # excluded: no count, shown in the health
    driver.flush()
    shown = page(driver)
    top = driver.get(f"{API}/pull_statistics?sort=pull_count&order=desc&limit=10").json()
    stale = driver.get(f"{API}/pull_statistics?sort=last_pull_date&limit=10").json()
    assert shown.rows("most-pulled") == [row["tag_name"] for row in top["tags"]]
    assert shown.rows("least-recent") == [row["tag_name"] for row in stale["tags"]]
    assert [t["datetime"] for t in shown.find("time", "least-recent")] == [
        row["last_tag_pull_date"] for row in stale["tags"] if row["last_tag_pull_date"]
    ]
    assert shown.find("a", "most-pulled", href="?days=30&ref=t03")  # a link to its history
    health = {row["data-key"] for row in shown.find("tr", "health")}
    assert {"buffered_keys", "pending_batches", "dropped_pulls", "excluded_pulls"} <= health
    assert "seconds_since_flush" in health
    html = driver.get(PAGE).body.decode()
    assert re.search(r'data-key="excluded_pulls"><th>[^<]*</th><td class="number">1<', html)


def test_the_charts_are_the_history_routes_days(driver: Driver) -> None:
    pull(driver, "t03", 3)
    pull(driver, "t03", 2, agent="skopeo")
    pull(driver, "t07", 1)
    driver.flush()
    shown = page(driver, "days=90")
    metrics = driver.metrics
    assert metrics is not None
    if metrics.database is None:  # the page says why there is no chart, and still serves
        assert "PULL_METRICS_DATABASE" in shown.texts["no-history"]
        assert not shown.find("svg") and shown.find("tr", "most-pulled")
        return
    repository = driver.get(f"{API}/pull_statistics/history?start={_start(90)}").json()
    assert _bars(shown, "repository-chart") == [
        (d["date"], d["pull_count"], d["unique_pullers"]) for d in repository["days"]
    ]
    assert shown.texts["reference"] == "t03"  # the most pulled tag, by default
    tag = driver.get(f"{API}/tag/t03/pull_statistics/history?start={_start(90)}").json()
    assert _bars(shown, "reference-chart") == [
        (d["date"], d["pull_count"], d["unique_pullers"]) for d in tag["days"]
    ]
    assert tag["days"][-1]["pull_count"] == 5 and tag["days"][-1]["unique_pullers"] == 2
    digest = driver.get("/v2/team/app/manifests/t07").headers["docker-content-digest"]
    driver.flush()
    chosen = page(driver, f"days=7&ref={digest}")
    manifest = driver.get(f"{API}/manifest/{digest}/pull_statistics/history?start={_start(7)}")
    assert _bars(chosen, "reference-chart") == [
        (d["date"], d["pull_count"], d["unique_pullers"]) for d in manifest.json()["days"]
    ]
    assert _bars(chosen, "reference-chart")[-1][1] == 2


def _start(days: int) -> str:
    import datetime as dt

    return (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days - 1)).isoformat()


def _bars(shown: Page, chart: str) -> list[tuple[str, int, int]]:
    ids = [values.get("id") for name, values, _ in shown.elements if name == "svg"]
    assert chart in ids
    bars: list[tuple[str, int, int]] = []
    inside = False
    for name, values, _ in shown.elements:
        if name == "svg":
            inside = values.get("id") == chart
        elif inside and name == "rect":
            pulls, pullers = int(values["data-pulls"]), int(values["data-pullers"])
            bars.append((values["data-date"], pulls, pullers))
    return bars


def test_names_from_the_registry_are_text_never_markup(kind: str, registry: MemoryRegistry) -> None:
    """The registry's tag list is user data it does not check: a tag called <script> is
    shown as those characters. No script, no img, no event handler reaches the page."""
    for name in HOSTILE:
        registry.add_manifest("team/app", b"{}", OCI_MANIFEST, tag=name)
    config = PullStatsConfig(enabled=True)
    metrics = PullMetrics(config, store=MemoryStore())
    result = make_driver(kind, registry, config, metrics).get(PAGE)
    metrics.close()
    html = result.body.decode()
    shown = Page(html)
    assert not shown.find("script") and not shown.find("img")
    assert not [v for _, v, _ in shown.elements if any(k.startswith("on") for k in v)]
    assert sorted(shown.rows("least-recent")) == sorted(HOSTILE)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<script>" not in html and "<img" not in html


def test_the_policy_allows_the_pages_own_style_and_nothing_else(client: Driver) -> None:
    result = client.get("/api/v1/pull_statistics/ui/library/hello")
    policy = result.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "unsafe" not in policy and "script-src" not in policy
    style = re.search(r"<style>(.*?)</style>", result.body.decode(), re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy
    assert result.headers["x-content-type-options"] == "nosniff"
    head = client.head("/api/v1/pull_statistics/ui/library/hello")
    assert head.status == 200 and head.body == b""


@pytest.mark.parametrize(
    "query, detail",
    [
        ("days=0", "days must be a number from 1 to 400, got '0'"),
        ("days=401", "days must be a number from 1 to 400"),
        ("days=week", "days must be a number"),
        ("ref=v!1", "ref must be a tag or a digest: invalid tag"),
        ("ref=md5:00", "ref must be a tag or a digest"),
        ("tag=v1", "unknown query parameter 'tag'"),
    ],
)
def test_bad_page_queries_are_400(client: Driver, query: str, detail: str) -> None:
    result = client.get(f"/api/v1/pull_statistics/ui/library/hello?{query}")
    assert result.status == 400 and detail in result.json()["detail"]


def test_the_registry_decides_who_sees_the_page(client: Driver) -> None:
    alice = "Basic " + base64.b64encode(b"alice:wonderland").decode()
    assert client.get("/api/v1/pull_statistics/ui/private/app").status == 401
    assert client.get("/api/v1/pull_statistics/ui/private/app", authorization=alice).status == 200
    assert client.get("/api/v1/pull_statistics/ui/absent/app").status == 404
    assert client.get("/api/v1/pull_statistics/ui/Bad/Name").status == 400
