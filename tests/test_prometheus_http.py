"""Prometheus scrapes through real HTTP servers, parsed by prometheus-client's parser.

- `pullstats proxy` (its command, uvicorn, one process) with PULL_METRICS_PROMETHEUS:
  `/metrics` and `/api/v1/pull_statistics/metrics`, a database and per-repository
  counters on, so every metric exists: the sample Grafana dashboard names only those.
- gunicorn (the WSGI adapter, `--preload`: workers forked from a process that built
  the app) and `uvicorn --workers` (the ASGI adapter, workers spawned), two worker
  processes each, in multiprocess mode: whichever worker answers the scrape, it
  counts the pulls every worker served.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
import redis

from pullstats_middleware.prometheus import PATH
from tests.apps import wait_for
from tests.e2e.services import PullstatsProxy, RedisServer
from tests.prometheus_apps import ROOT, Workers, families, value

DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"
HELLO = "/v2/library/hello/manifests/v1"
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


def scrape(url: str, path: str = PATH) -> tuple[dict[str, object], str]:
    """The parsed scrape and the worker process that answered it."""
    answer = httpx2.get(url + path, timeout=10)
    assert answer.status_code == 200, answer.text
    return families(answer.text), answer.headers.get("x-worker", "")


def test_the_proxy_serves_metrics_and_every_dashboard_metric_exists(
    redis_url: str, tmp_path: Path
) -> None:
    from pullstats_middleware.serving import upgrade_database

    database = f"sqlite:///{tmp_path}/pullstats.db"
    upgrade_database(database)
    env = {
        "PULL_METRICS_PROMETHEUS": "true",
        "PULL_METRICS_PROMETHEUS_REPOSITORIES": "library/hello",
        "PULL_METRICS_DATABASE": database,
        "PULL_METRICS_DATABASE_FLUSH_INTERVAL": "0.2",
    }
    with (
        Workers("uvicorn", {}, workers=1, app="upstream") as upstream,
        PullstatsProxy(upstream.url, redis_url, env=env) as proxy,
        httpx2.Client(base_url=proxy.url, timeout=10) as client,
    ):
        digest = client.get(HELLO).headers["docker-content-digest"]  # a HEAD would pair
        for path in (HELLO, "/v2/team/app/manifests/v1"):
            assert client.get(path).status_code == 200
        assert client.get(f"/v2/library/hello/manifests/{digest}").status_code == 200
        containerd = {"User-Agent": "containerd/1.7"}
        client.head(HELLO, headers=containerd)
        client.get(f"/v2/library/hello/manifests/{digest}", headers=containerd)

        def pairs_seen() -> bool:
            return value(scrape(proxy.url, "/metrics")[0], "pullstats_attribution_pairs_total") == 1

        assert wait_for(pairs_seen, 20)
        at_root, _ = scrape(proxy.url, "/metrics")
        mounted, _ = scrape(proxy.url)
        stats = client.get("/api/v1/repository/library/hello/tag/v1/pull_statistics").json()

    for got in (at_root, mounted):
        assert value(got, "pullstats_pulls_recorded_total", kind="tag") == 3
        assert value(got, "pullstats_pulls_recorded_total", kind="manifest") == 5
        hello = {"repository": "library/hello"}
        assert value(got, "pullstats_repository_pulls_total", kind="tag", **hello) == 2
        assert value(got, "pullstats_repository_pulls_total", kind="manifest", **hello) == 4
        assert value(got, "pullstats_repository_pulls_total", repository="other", kind="tag") == 1
        assert (value(got, "pullstats_sql_flush_lag_seconds") or 0) >= 0
        assert "process_resident_memory_bytes" in got
    assert stats["tag_pull_count"] == 2 + 1 and stats["manifest_pull_count"] == 4

    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    named = set(re.findall(r"\bpullstats_[a-z_]+", " ".join(queries)))
    exposed = {family + suffix for family in at_root for suffix in SUFFIXES}
    assert len(named) >= 15 and named <= exposed, named - exposed


def drive_and_scrape(service: Workers, pulls: int = 40) -> tuple[set[str], set[str]]:
    """`pulls` tag pulls, four at a time on fresh connections, then scrapes until two
    different workers have answered with the total; (workers that served pulls,
    workers that answered a scrape with the total)."""
    served: set[str] = set()
    lock = threading.Lock()

    def pull(_: int) -> None:
        answer = httpx2.get(service.url + HELLO, timeout=10)  # a new connection each
        assert answer.status_code == 200
        with lock:
            served.add(answer.headers["x-worker"])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(pull, range(pulls)))
    answered: set[str] = set()

    def two_workers_agree() -> bool:
        got, worker = scrape(service.url)
        if value(got, "pullstats_pulls_recorded_total", kind="tag") == pulls:
            assert value(got, "pullstats_repository_pulls_total", repository="library/hello",
                         kind="tag") == pulls  # fmt: skip
            assert value(got, "pullstats_pending_batches") == 0
            answered.add(worker)
        return len(answered) >= 2

    assert wait_for(two_workers_agree, 30), (served, answered)
    return served, answered


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_several_workers_add_up(server: str, redis_url: str, tmp_path: Path) -> None:
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "FEATURE_IMAGE_PULL_STATS": "true",
        "PULL_METRICS_REDIS": redis_url,
        "PULL_METRICS_FLUSH_INTERVAL": "0.05",
        "PULL_METRICS_PROMETHEUS": "true",
        "PULL_METRICS_PROMETHEUS_REPOSITORIES": "2",
    }
    with Workers(server, env) as service:
        served, answered = drive_and_scrape(service)
        files = {path.name for path in tmp_path.iterdir()}
    assert len(served) == 2, served  # both workers served pulls: the counts had to add up
    assert answered <= served
    for worker in served:  # each worker wrote its own files
        assert f"counter_{worker}.db" in files, files
