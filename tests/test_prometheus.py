"""Prometheus metrics in process: what a scrape shows equals what was driven, through
both adapters; the token; bounded repository labels; Redis errors while Redis is
down (a real redis-server); the core without prometheus-client installed."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pullstats_middleware import PullMetrics, PullStatsConfig, PullStatsMiddleware
from pullstats_middleware.config import ConfigError
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.prometheus import PATH, PullStatsCollector, RepositoryLabels, scrape
from pullstats_middleware.store import MemoryStore
from tests.apps import Driver, make_driver, wait_for
from tests.e2e.services import RedisServer
from tests.prometheus_apps import families, value

TAG = "/v2/library/hello/manifests/v1"
TRIVY = {"User-Agent": "trivy/0.50"}


def scraped(driver: Driver, **headers: str) -> dict[str, object]:
    answer = driver.get(PATH, **headers)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return families(answer.body.decode())


@pytest.fixture
def prometheus_config() -> PullStatsConfig:
    return PullStatsConfig(
        enabled=True,
        flush_interval=0.05,
        prometheus=True,
        exclude=[{"user_agent": "^trivy/"}],
        prometheus_repositories=1,
    )


@pytest.fixture
def driver(
    kind: str, registry: MemoryRegistry, prometheus_config: PullStatsConfig
) -> Iterator[Driver]:
    metrics = PullMetrics(prometheus_config, store=MemoryStore())
    yield make_driver(kind, registry, prometheus_config, metrics)
    metrics.close()


def test_a_scrape_shows_the_pulls_driven(driver: Driver) -> None:
    """By tag (3), by digest (2), containerd's HEAD + GET (1), a scanner (2, excluded),
    a HEAD alone and a 404 (nothing): the scrape agrees with the JSON routes."""
    for _ in range(3):
        assert driver.get(TAG).status == 200
    digest = driver.head(TAG).headers["docker-content-digest"]
    for _ in range(2):
        assert (
            driver.get(f"/v2/library/hello/manifests/{digest}", User_Agent="skopeo").status == 200
        )
    driver.head(TAG, User_Agent="containerd")
    driver.get(f"/v2/library/hello/manifests/{digest}", User_Agent="containerd")
    for _ in range(2):
        assert driver.request("GET", TAG, TRIVY).status == 200
    assert driver.get("/v2/library/hello/manifests/v9").status == 404
    driver.get("/v2/library/multi/manifests/latest")  # another repository: "other"
    driver.flush()

    got = scraped(driver)
    stats = driver.get("/api/v1/repository/library/hello/tag/v1/pull_statistics").json()
    tag_pulls = value(got, "pullstats_pulls_recorded_total", kind="tag")
    pairs = value(got, "pullstats_attribution_pairs_total")
    assert (tag_pulls, pairs) == (4, 1)  # 3 hello + 1 multi; the pair is the fourth hello
    assert stats["tag_pull_count"] == 3 + 1
    assert value(got, "pullstats_pulls_recorded_total", kind="manifest") == 3 + 2 + 1 + 1
    assert value(got, "pullstats_pulls_excluded_total") == 2
    assert value(got, "pullstats_pulls_dropped_total") == 0
    # the first repository pulled keeps its name; the bound is one
    hello = {"repository": "library/hello"}
    assert value(got, "pullstats_repository_pulls_total", kind="tag", **hello) == 3
    assert value(got, "pullstats_repository_pulls_total", kind="manifest", **hello) == 6
    assert value(got, "pullstats_repository_pulls_total", repository="other", kind="tag") == 1
    assert value(got, "pullstats_repository_pulls_total", repository="other", kind="manifest") == 1
    batches = value(got, "pullstats_batches_applied_total")
    assert batches and batches == value(got, "pullstats_flush_duration_seconds_count")
    for gauge in ("buffered_keys", "pending_batches", "seconds_since_last_flush"):
        assert value(got, f"pullstats_{gauge}") == 0
    assert value(got, "pullstats_batch_retries_total") == 0
    assert "pullstats_redis_errors" in got  # no error yet: the family, no sample
    assert "process_cpu_seconds" in got  # one process: its own metrics too
    ours = [name for name in got if name.startswith("pullstats_")]
    assert len(ours) == 14 and not [name for name in ours if name.endswith("_created")]


def test_the_route_is_mounted_only_when_asked(kind: str, registry: MemoryRegistry) -> None:
    """Off by default: the path is the wrapped app's (its 404)."""
    metrics = PullMetrics(PullStatsConfig(enabled=True), store=MemoryStore())
    driver = make_driver(kind, registry, metrics.config, metrics)
    answer = driver.get(PATH)
    assert answer.status == 404 and b"pullstats" not in answer.body
    metrics.close()


def test_a_token_guards_the_scrape(kind: str, registry: MemoryRegistry) -> None:
    config = PullStatsConfig(enabled=True, prometheus=True, prometheus_token="s3cret")
    metrics = PullMetrics(config, store=MemoryStore())
    driver = make_driver(kind, registry, config, metrics)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        answer = driver.request("GET", PATH, headers)
        assert answer.status == 401, headers
        assert answer.headers["www-authenticate"] == 'Bearer realm="pullstats metrics"'
        assert b"PULL_METRICS_PROMETHEUS_TOKEN" in answer.body
    assert driver.request("GET", PATH, {"Authorization": "Bearer s3cret"}).status == 200
    head = driver.request("HEAD", PATH, {"Authorization": "bearer s3cret"})
    assert (head.status, head.body) == (200, b"")
    assert driver.request("POST", PATH, {"Authorization": "Bearer s3cret"}).status == 405
    metrics.close()


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    metrics = PullMetrics(PullStatsConfig(enabled=True), store=MemoryStore())
    answer = scrape(metrics, {"accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers[0][1].startswith("application/openmetrics-text")
    assert answer.body.endswith(b"# EOF\n")
    metrics.close()


def test_repository_labels_are_bounded() -> None:
    first_two = RepositoryLabels(2)
    assert [first_two(r) for r in ("a/a", "b/b", "c/c", "a/a", "d/d", "b/b")] == [
        "a/a", "b/b", "other", "a/a", "other", "b/b",
    ]  # fmt: skip
    named = RepositoryLabels(("b/b", "d/d"))
    assert [named(r) for r in ("a/a", "b/b", "c/c", "d/d")] == ["other", "b/b", "other", "d/d"]
    assert RepositoryLabels(0).limit == 0 and RepositoryLabels(()).limit == 0


def test_no_repository_metric_unless_asked() -> None:
    metrics = PullMetrics(PullStatsConfig(enabled=True), store=MemoryStore())
    metrics.track_tag_pull("a/b", "v1", "sha256:" + "a" * 64)
    assert metrics.flush(5)
    got = families(scrape(metrics, {}).body.decode())
    assert "pullstats_repository_pulls" not in got
    assert "pullstats_sql_flush_lag_seconds" not in got  # no database either
    assert value(got, "pullstats_pulls_recorded_total", kind="tag") == 1
    metrics.close()


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        ("5", 5),
        (0, 0),
        ("library/hello, team/app,", ("library/hello", "team/app")),
        (["team/app", "team/app"], ("team/app",)),
    ],
)
def test_the_repositories_key(given: object, parsed: object) -> None:
    config = PullStatsConfig.from_mapping({"PULL_METRICS_PROMETHEUS_REPOSITORIES": given})
    assert config.prometheus_repositories == parsed


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("-1", "PULL_METRICS_PROMETHEUS_REPOSITORIES must be an integer >= 0, got -1"),
        ("Team/App", "PULL_METRICS_PROMETHEUS_REPOSITORIES: invalid repository name 'Team/App'"),
        ([1, 2], "PULL_METRICS_PROMETHEUS_REPOSITORIES must be a list of repository names"),
    ],
)
def test_a_bad_repositories_key_is_named(given: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        PullStatsConfig.from_mapping({"PULL_METRICS_PROMETHEUS_REPOSITORIES": given})


def test_a_blank_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="PULL_METRICS_PROMETHEUS_TOKEN must be a non-empty"):
        PullStatsConfig(prometheus_token=" ")


def test_a_missing_multiprocess_directory_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "nowhere"))
    config = PullStatsConfig(enabled=True, prometheus=True)
    with pytest.raises(ConfigError, match=r"PROMETHEUS_MULTIPROC_DIR=.*nowhere.* is not a dir"):
        PullStatsMiddleware(lambda environ, start_response: [], config)


def test_redis_errors_retries_and_staleness_while_redis_is_down(
    redis_server: RedisServer,
) -> None:
    """Redis stopped: the failed attempts show by kind, the batch waits, the store is
    stale; Redis back: everything lands once and the staleness is 0 again."""
    if not redis_server.running:
        redis_server.start()
    config = PullStatsConfig(enabled=True, redis=redis_server.url, flush_interval=0.05)
    metrics = PullMetrics(config)
    collector = PullStatsCollector.of(metrics)
    assert PullStatsCollector.of(metrics) is collector  # one per PullMetrics
    metrics.track_tag_pull("a/b", "v1", "sha256:" + "a" * 64)
    assert metrics.flush(10)
    redis_server.stop()
    try:
        metrics.track_tag_pull("a/b", "v1", "sha256:" + "a" * 64)
        assert wait_for(lambda: metrics.recorder.batch_retries >= 2)  # the fault happened
        time.sleep(0.01)  # a measurable staleness, whatever the clock's resolution
        down = families(scrape(metrics, {}).body.decode())
    finally:
        redis_server.start()
    assert metrics.flush(30)
    up = families(scrape(metrics, {}).body.decode())

    errors = value(down, "pullstats_redis_errors_total", kind="ConnectionError")
    retries = value(down, "pullstats_batch_retries_total")
    assert errors is not None and retries is not None and errors == retries >= 2
    assert value(down, "pullstats_pending_batches") == 1
    assert (value(down, "pullstats_seconds_since_last_flush") or 0) > 0
    assert value(down, "pullstats_pulls_recorded_total", kind="tag") == 1
    assert value(up, "pullstats_pulls_recorded_total", kind="tag") == 2
    assert value(up, "pullstats_batches_applied_total") == 2
    assert value(up, "pullstats_pending_batches") == 0
    assert value(up, "pullstats_seconds_since_last_flush") == 0
    assert (value(up, "pullstats_redis_errors_total", kind="ConnectionError") or 0) >= errors
    metrics.close()


def test_the_flush_worker_lag_with_a_database(tmp_path: Path) -> None:
    from pullstats_middleware.serving import upgrade_database

    url = f"sqlite:///{tmp_path}/pullstats.db"
    upgrade_database(url)
    config = PullStatsConfig(
        enabled=True, flush_interval=0.05, database=url, database_flush_interval=0.05
    )
    metrics = PullMetrics(config, store=MemoryStore())
    metrics.track_tag_pull("a/b", "v1", "sha256:" + "a" * 64)
    assert metrics.flush(5)
    flusher = metrics.flusher
    assert flusher is not None
    assert wait_for(lambda: flusher.last_success is not None)
    last = flusher.last_success
    assert last is not None
    lag = value(families(scrape(metrics, {}).body.decode()), "pullstats_sql_flush_lag_seconds")
    assert lag is not None and 0 <= lag <= time.time() - last + 1  # +1: a cycle may land since
    metrics.close()


def test_the_core_never_imports_prometheus_client() -> None:
    """prometheus-client is the [prometheus] extra: without it everything else imports
    and counts, and PULL_METRICS_PROMETHEUS says what to install."""
    script = (
        "import sys\n"
        "import pullstats_middleware.cli, pullstats_middleware.proxy\n"
        "from pullstats_middleware import ConfigError, PullMetrics, PullStatsConfig\n"
        "from pullstats_middleware import PullStatsMiddleware\n"
        "m = PullMetrics(PullStatsConfig(enabled=True)); m.track_tag_pull('a/b', 'v1', "
        "'sha256:' + 'a' * 64); assert m.flush(5); m.health()\n"
        "PullStatsMiddleware(lambda e, s: [], metrics=m); m.close()\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        "sys.modules['prometheus_client'] = None\n"
        "try:\n    PullStatsMiddleware(lambda e, s: [], PullStatsConfig(enabled=True, "
        "prometheus=True))\n"
        "except ConfigError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'pullstats-middleware[prometheus]'" in done.stdout


def test_forked_workers_start_copying_with_the_lock_free() -> None:
    """gunicorn --preload forks workers while the copying thread runs: 100 forks during
    copies every 0.1 ms, each holding the lock for 0.5 ms; each child finds the
    collector's lock free and its own copying thread running."""
    script = """
import os, sys, tempfile, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a process with threads
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.prometheus import PullStatsCollector
from pullstats_middleware.store import MemoryStore

copies = [0]
sync = PullStatsCollector.sync
def slow(self):  # holds the lock across a GIL release, as a copy slowed down would
    copies[0] += 1
    with self._lock:
        time.sleep(0.0005)
        return sync(self)
PullStatsCollector.sync = slow
metrics = PullMetrics(PullStatsConfig(enabled=True, flush_interval=0.0001), store=MemoryStore())
collector = PullStatsCollector.of(metrics)
failed = 0
for _ in range(100):
    pid = os.fork()
    if pid == 0:
        free = collector._lock.acquire(timeout=5)
        running = any(t.name == "pullstats-prometheus" for t in threading.enumerate())
        os._exit(0 if free and running else 1)
    failed += os.waitpid(pid, 0)[1] != 0
print(failed, copies[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    failed, copies = map(int, done.stdout.split())
    assert copies >= 100  # the thread copied while the forks happened
    assert failed == 0


def test_the_proxy_also_answers_at_the_root() -> None:
    """`pullstats proxy` wraps its app in MetricsAtRoot: `/metrics` (same token), and
    everything else passes through, lifespan included."""
    from starlette.testclient import TestClient

    from pullstats_middleware import PullStatsASGIMiddleware
    from pullstats_middleware.demo_registry import starlette_app
    from pullstats_middleware.proxy.metrics_root import MetricsAtRoot

    registry = MemoryRegistry()
    registry.push_image("library/hello", "v1")
    config = PullStatsConfig(enabled=True, prometheus=True, prometheus_token="t0ken")
    metrics = PullMetrics(config, store=MemoryStore())
    app = MetricsAtRoot(PullStatsASGIMiddleware(starlette_app(registry), metrics=metrics))
    token = {"Authorization": "Bearer t0ken"}
    with TestClient(app) as client:
        assert client.get("/v2/library/hello/manifests/v1").status_code == 200
        assert client.get("/metrics").status_code == 401
        scraped = client.get("/metrics", headers=token)
        assert scraped.status_code == 200
        assert value(families(scraped.text), "pullstats_pulls_excluded_total") == 0
        head = client.head("/metrics", headers=token)
        assert (head.status_code, head.content) == (200, b"")
        post = client.post("/metrics", headers=token)
        assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
    # the lifespan's shutdown flushed the pull
    assert metrics.get_tag_statistics("library/hello", "v1")["tag_pull_count"] == 1
    with pytest.raises(ValueError, match="wraps the statistics middleware"):
        MetricsAtRoot(starlette_app(registry))
