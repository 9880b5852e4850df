"""The dashboard in a real browser: headless Chromium loads the page from `pullstats
proxy` in front of a CNCF distribution registry, with real pushes and pulls (and
months of back-dated history in SQLite), and every bar and every table row is
checked against the JSON routes. A screenshot is saved with the test's files.

Then the same page around a registry whose tag list is hostile (names that are
markup): nothing of it runs, and without a database the page says what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from pullstats_middleware import PullStatsASGIMiddleware, PullStatsConfig
from pullstats_middleware.demo_registry import OCI_MANIFEST, MemoryRegistry, starlette_app
from pullstats_middleware.durable import Database
from tests.e2e.browser import (
    LEGACY,
    NEW,
    PULLED,
    REPOSITORY,
    attributes,
    chromium,
    full_page_screenshot,
    seed,
    texts,
    wait_until_counted,
)
from tests.e2e.services import DockerRegistry, PullstatsProxy, RedisServer
from tests.test_proxy import Served

pytestmark = pytest.mark.e2e
PAGE = f"/api/v1/pull_statistics/ui/{REPOSITORY}"
API = f"/api/v1/repository/{REPOSITORY}"
SEEDED_DAYS = 120


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def served(
    registry: DockerRegistry, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PullstatsProxy, dict[str, int]]]:
    """The proxy with an SQLite database and its embedded flusher, and what each tag
    should count once everything is recorded."""
    workdir = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{workdir / 'pullstats.db'}"
    Database(url).upgrade()
    env = {"PULL_METRICS_DATABASE": url, "PULL_METRICS_DATABASE_FLUSH_INTERVAL": "0.5"}
    with PullstatsProxy(registry.url, redis.url, env=env) as proxy:
        counted = seed(registry, proxy, redis.url, workdir, SEEDED_DAYS)
        wait_until_counted(proxy, counted)
        yield proxy, counted


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    yield driver
    driver.quit()


def bars(browser: webdriver.Chrome, chart: str) -> list[tuple[str, int, int]]:
    found = attributes(browser, f"#{chart} rect.pulls", "data-date", "data-pulls", "data-pullers")
    return [(date, int(pulls), int(pullers)) for date, pulls, pullers in found]


def days_of(history: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(d["date"], d["pull_count"], d["unique_pullers"]) for d in history["days"]]


def test_the_page_shows_what_the_json_routes_answer(
    served: tuple[PullstatsProxy, dict[str, int]],
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    proxy, counted = served
    browser.get(proxy.url + PAGE)
    assert browser.title == f"Pull statistics: {REPOSITORY}"

    # The repository's chart: one bar per day of the last 30, as the history route says.
    shown = bars(browser, "repository-chart")
    start, end = shown[0][0], shown[-1][0]
    history = get_json(f"{proxy.url}{API}/pull_statistics/history?start={start}&end={end}")
    assert len(shown) == 30 and shown == days_of(history)
    assert shown[-1][1] == 6  # today's real pulls through the proxy: 3 + 2 + 1
    assert browser.find_element(By.ID, "repository-total").text == f"{sum(d[1] for d in shown):,}"

    # Drawn to scale: every bar's rendered height is its count times one factor.
    heights = browser.execute_script(
        "return Array.from(document.querySelectorAll('#repository-chart rect.pulls'))"
        ".map(e => e.getBoundingClientRect().height)"
    )
    tallest = max(range(30), key=lambda n: shown[n][1])
    scale = heights[tallest] / shown[tallest][1]
    assert all(
        abs(h - pulls * scale) < 0.5 for h, (_, pulls, _) in zip(heights, shown, strict=True)
    )

    # The most pulled tag's chart, by default.
    reference = browser.find_element(By.ID, "reference").text
    assert reference == max(counted, key=lambda tag: counted[tag])
    route = f"{proxy.url}{API}/tag/{reference}/pull_statistics/history?start={start}&end={end}"
    assert bars(browser, "reference-chart") == days_of(get_json(route))

    # The tables: the listing route's first ten rows in each order, with their dates.
    top = get_json(f"{proxy.url}{API}/pull_statistics?sort=pull_count&order=desc&limit=10")
    assert [r[0] for r in attributes(browser, "#most-pulled tr[data-tag]", "data-tag")] == [
        row["tag_name"] for row in top["tags"]
    ]
    assert texts(browser, "#most-pulled tr[data-tag] td.number") == [
        f"{row['tag_pull_count']}" for row in top["tags"]
    ]
    stale = get_json(f"{proxy.url}{API}/pull_statistics?sort=last_pull_date&limit=10")["tags"]
    assert [r[0] for r in attributes(browser, "#least-recent tr[data-tag]", "data-tag")] == [
        row["tag_name"] for row in stale
    ]
    assert {row["tag_name"] for row in stale[:2]} == {NEW, LEGACY}  # never pulled, first
    pushed = attributes(browser, f'#least-recent tr[data-tag="{NEW}"] time', "datetime")
    assert pushed == [(next(r for r in stale if r["tag_name"] == NEW)["last_push_date"],)]
    assert texts(browser, f'#least-recent tr[data-tag="{LEGACY}"] .never') == ["never", "never"]

    # The recorder's health, and the embedded flusher's last success.
    health = {row[0] for row in attributes(browser, "#health tr[data-key]", "data-key")}
    assert {"buffered_keys", "pending_batches", "dropped_pulls", "excluded_pulls"} <= health
    assert texts(browser, '#health tr[data-key="dropped_pulls"] td') == ["0"]
    seconds = browser.find_element(By.CSS_SELECTOR, '#health tr[data-key="seconds_since_flush"] td')
    assert float(seconds.text) >= 0

    # Nothing ran, nothing was refused: no script on the page, no policy violation.
    assert browser.execute_script("return document.scripts.length") == 0
    assert not [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    screenshot = full_page_screenshot(browser, tmp_path / "dashboard.png")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"dashboard screenshot: {screenshot}")
    if os.environ.get("PULLSTATS_DASHBOARD_SCREENSHOT"):  # to refresh the README's image
        shutil.copy(screenshot, os.environ["PULLSTATS_DASHBOARD_SCREENSHOT"])


def test_a_click_on_a_tag_and_on_a_year_show_their_history(
    served: tuple[PullstatsProxy, dict[str, int]], browser: webdriver.Chrome
) -> None:
    proxy, _ = served
    browser.get(proxy.url + PAGE)
    oldest = PULLED[-1]
    browser.find_element(By.CSS_SELECTOR, f'#least-recent tr[data-tag="{oldest}"] a').click()
    assert browser.find_element(By.ID, "reference").text == oldest
    assert browser.current_url.endswith(f"?days=30&ref={oldest}")
    browser.find_element(By.LINK_TEXT, "last 365 days").click()
    year = bars(browser, "reference-chart")
    assert len(year) == 365 and browser.find_element(By.ID, "reference").text == oldest
    start, end = year[0][0], year[-1][0]
    route = f"{proxy.url}{API}/tag/{oldest}/pull_statistics/history?start={start}&end={end}"
    assert year == days_of(get_json(route))
    seeded = [pulls for date, pulls, _ in year if date >= year[-1 - SEEDED_DAYS][0]]
    assert sum(seeded) == sum(pulls for _, pulls, _ in year) > 0  # nothing before the seed
    repository = get_json(f"{proxy.url}{API}/pull_statistics/history?start={start}&end={end}")
    assert bars(browser, "repository-chart") == days_of(repository)


def test_hostile_tag_names_are_shown_as_text_and_nothing_runs(browser: webdriver.Chrome) -> None:
    """A registry is free to list any tag name: the page must show it, not run it. And
    without a database, the page still serves its tables and the recorder's health."""
    hostile = [
        "<script>window.pwned = 'script'</script>",
        '"><img src=x onerror="window.pwned = \'img\'">',
        "</td></tr></table><svg onload=\"window.pwned = 'svg'\">",
    ]
    registry = MemoryRegistry()
    for name in hostile:
        registry.add_manifest("evil/app", b"{}", OCI_MANIFEST, tag=name)
    app = PullStatsASGIMiddleware(starlette_app(registry), config=PullStatsConfig(enabled=True))
    with Served(app) as server:
        browser.get(server.url + "/api/v1/pull_statistics/ui/evil/app")
        cells = texts(browser, "#least-recent tr[data-tag] td:first-child")
        assert sorted(cells) == sorted(hostile)
        assert browser.execute_script("return window.pwned === undefined")
        markup = "return document.querySelectorAll('script, img, svg').length"
        assert browser.execute_script(markup) == 0  # no chart either: no database
        assert "PULL_METRICS_DATABASE" in browser.find_element(By.ID, "no-history").text
        assert texts(browser, '#health tr[data-key="dropped_pulls"] td') == ["0"]
