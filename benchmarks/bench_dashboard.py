"""The dashboard page's time to first render in headless Chromium, next to a baseline.

    python benchmarks/bench_dashboard.py [--loads 15] [--tags 5]

Starts redis-server, a CNCF distribution registry (`docker-registry`) and `pullstats
proxy` with an SQLite database; pushes and pulls a repository for real and writes a
year of back-dated daily pulls (tests/e2e/browser.py; `--tags` more tags, each pulled
every day of the year, make the repository's history heavier). Then Chromium loads
the page for 30, 90 and 365 days, `--loads` times each, interleaved with the
baseline: the very same HTML saved to a file and served by Python's static file
server, so the difference is what the middleware's reads and rendering cost.

Figures, medians over the loads: first contentful paint (the Performance API's
`first-contentful-paint`, from navigation start), and the server's share (request
sent to last byte received, Navigation Timing), and for comparison the time the same
data takes from the JSON routes, four requests in a row. Prints one table; asserts
nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import http.server
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from figures import print_table  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from selenium import webdriver

from pullstats_middleware.durable import Database
from pullstats_middleware.store import Batch, ManifestDelta, RedisStore, TagDelta
from tests.e2e.browser import (
    REPOSITORY,
    chromium,
    first_contentful_paint,
    seed,
    wait_until_counted,
)
from tests.e2e.services import DockerRegistry, PullstatsProxy, RedisServer, temp_dir

PAGE = f"/api/v1/pull_statistics/ui/{REPOSITORY}"
NAVIGATION = (
    "const n = performance.getEntriesByType('navigation')[0];"
    "return [n.responseEnd - n.requestStart, n.transferSize || n.encodedBodySize];"
)


def more_tags(redis_url: str, tags: int) -> None:
    """`tags` tags of their own image each, pulled by 3 clients every day of a year."""
    store = RedisStore(redis.Redis.from_url(redis_url), durable=True)
    today = dt.datetime.now(dt.timezone.utc).date()
    for back in range(365, 0, -1):
        at = f"{today - dt.timedelta(days=back)}T12:00:00Z"
        batch = Batch(f"more-{back}")
        for n in range(tags):
            digest, clients = f"sha256:{n + 1:064x}", ("a", "b", f"c{n}")
            batch.tags.append(TagDelta(REPOSITORY, f"extra-{n}", 3, at, digest, clients))
            batch.manifests.append(ManifestDelta(REPOSITORY, digest, 3, at, clients))
        store.apply(batch, window=10.0, skew=1.0)
    store.client.close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


Sample = tuple[float, float, int]  # first contentful paint ms, request to last byte ms, bytes


def measure(browser: webdriver.Chrome, url: str) -> Sample:
    """One fresh load."""
    browser.get(url)
    fcp = None
    while fcp is None:  # painted by now, as a rule; the entry can lag the load event
        fcp = first_contentful_paint(browser)
    server, size = browser.execute_script(NAVIGATION)
    return fcp, float(server), int(size)


def json_reads(base: str, days: int) -> float:
    """Milliseconds to fetch what the page shows from the JSON routes instead, one
    request after the other: both listings, the repository's and the top tag's history."""
    api = f"{base}/api/v1/repository/{REPOSITORY}"
    start = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days - 1)
    started = time.perf_counter()
    with urllib.request.urlopen(f"{api}/pull_statistics?sort=pull_count&order=desc&limit=10") as a:
        top = json.load(a)["tags"][0]["tag_name"]
    for path in (
        "pull_statistics?sort=last_pull_date&limit=10",
        f"pull_statistics/history?start={start}",
        f"tag/{top}/pull_statistics/history?start={start}",
    ):
        with urllib.request.urlopen(f"{api}/{path}") as answer:
            answer.read()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=15)
    parser.add_argument("--tags", type=int, default=0, help="more tags, pulled daily for a year")
    options = parser.parse_args()
    with (
        temp_dir() as work,
        RedisServer() as redis_server,
        DockerRegistry(log_level="warn") as registry,
    ):
        url = f"sqlite:///{work / 'pullstats.db'}"
        Database(url).upgrade()
        env = {"PULL_METRICS_DATABASE": url, "PULL_METRICS_DATABASE_FLUSH_INTERVAL": "0.5"}
        with PullstatsProxy(registry.url, redis_server.url, env=env, log_level="warning") as proxy:
            counted = seed(registry, proxy, redis_server.url, work, 365)
            more_tags(redis_server.url, options.tags)
            counted.update({f"extra-{n}": 3 * 365 for n in range(options.tags)})
            wait_until_counted(proxy, counted)
            static = work / "static"
            static.mkdir()
            handler = functools.partial(Quiet, directory=str(static))
            files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=files.serve_forever, daemon=True).start()
            browser = chromium()
            rows = []
            try:
                for days in (30, 90, 365):
                    ours = f"{proxy.url}{PAGE}?days={days}"
                    with urllib.request.urlopen(ours, timeout=60) as answer:
                        (static / f"{days}.html").write_bytes(answer.read())
                    base = f"http://127.0.0.1:{files.server_address[1]}/{days}.html"
                    measure(browser, ours), measure(browser, base)  # warm both up
                    got: dict[str, list[Sample]] = {"ours": [], "base": [], "json": []}
                    for n in range(options.loads):
                        got["ours"].append(measure(browser, ours))
                        got["base"].append(measure(browser, f"{base}?n={n}"))
                        got["json"].append((0.0, json_reads(proxy.url, days), 0))
                    rows.append((days, got))
            finally:
                browser.quit()
                files.shutdown()
    report(rows, options)


def report(rows: list[tuple[int, dict[str, list[Sample]]]], options: argparse.Namespace) -> None:
    def median(samples: list[Sample], at: int) -> float:
        return statistics.median(sample[at] for sample in samples)

    table = [("figure", "ours (proxy)", "baseline: same HTML, static file", "difference")]
    for days, got in rows:
        ours, base = median(got["ours"], 0), median(got["base"], 0)
        paint = f"first contentful paint, {days} days"
        table.append((paint, f"{ours:.0f} ms", f"{base:.0f} ms", f"{ours - base:+.0f} ms"))
        ours, base = median(got["ours"], 1), median(got["base"], 1)
        server = "  request to last byte"
        table.append((server, f"{ours:.1f} ms", f"{base:.1f} ms", f"{ours - base:+.1f} ms"))
        reads = f"{median(got['json'], 1):.1f} ms"
        table.append(("  the same data, 4 JSON requests", reads, "", ""))
        table.append(("  page size", f"{median(got['ours'], 2) / 1024:.0f} KiB", "", ""))
    tags = f"5 tags + {options.tags} more" if options.tags else "5 tags"
    print(
        f"dashboard of {REPOSITORY} ({tags}, a year of daily history, SQLite), "
        f"median of {options.loads} loads in headless Chromium"
    )
    print_table(table[0], table[1:])


if __name__ == "__main__":
    main()
