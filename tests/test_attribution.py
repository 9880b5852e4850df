"""docs/design.md, "Attribution": the containerd row, across processes sharing one
real redis-server.

Two middlewares with their own recorders stand for two processes (or hosts):
the HEAD lands on one, the GET on the other, and either may flush first.
"""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
import redis

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.identity import client_address
from tests.apps import Driver, make_driver
from tests.e2e.services import RedisServer

HELLO = "/v2/library/hello/manifests/v1"


def process(kind: str, registry: MemoryRegistry, url: str, **config: object) -> Driver:
    settings: dict[str, object] = {"flush_interval": 3600.0, **config}  # flushes only when told
    cfg = PullStatsConfig(enabled=True, redis={"url": url}, **settings)  # type: ignore[arg-type]
    return make_driver(kind, registry, cfg, PullMetrics(cfg))


@pytest.fixture
def pair(
    kind: str, registry: MemoryRegistry, real_redis: redis.Redis, redis_server: RedisServer
) -> tuple[Driver, Driver]:
    return process(kind, registry, redis_server.url), process(kind, registry, redis_server.url)


def tag_count(a: Driver) -> tuple[int, int]:
    assert a.metrics is not None
    stats = a.metrics.get_tag_statistics("library/hello", "v1")
    return stats["tag_pull_count"], stats["manifest_pull_count"]


@pytest.mark.parametrize("first", ["head", "get"])
def test_head_on_one_process_get_on_another_is_one_tag_pull(
    pair: tuple[Driver, Driver], first: str
) -> None:
    a, b = pair
    digest = a.head(HELLO, user_agent="containerd/1.6").headers["docker-content-digest"]
    assert b.get(f"/v2/library/hello/manifests/{digest}", user_agent="containerd/1.6").status == 200
    for driver in (a, b) if first == "head" else (b, a):
        driver.flush()
    assert tag_count(a) == (1, 1)
    assert tag_count(b) == (1, 1)


def test_many_clients_round_robin_exact_counts(pair: tuple[Driver, Driver]) -> None:
    rng = random.Random(7)
    digest = pair[0].head(HELLO).headers["docker-content-digest"]
    for n in range(200):
        agent = f"containerd/node-{n}"
        head_on, get_on = rng.sample(pair, 2)
        head_on.head(HELLO, user_agent=agent)
        get_on.get(f"/v2/library/hello/manifests/{digest}", user_agent=agent)
        if n % 37 == 0:
            rng.choice(pair).flush()
    for driver in rng.sample(pair, 2):
        driver.flush()
    assert tag_count(pair[0]) == (200, 200)


def test_a_get_outside_the_window_is_a_digest_pull(
    kind: str, registry: MemoryRegistry, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    a = process(kind, registry, redis_server.url, resolution_window=0.2)
    digest = a.head(HELLO).headers["docker-content-digest"]
    time.sleep(0.2 + 2.0 + 0.3)  # window + clock-skew allowance
    a.get(f"/v2/library/hello/manifests/{digest}")
    a.flush()
    assert tag_count(a) == (0, 0)
    assert a.metrics is not None
    assert a.metrics.get_manifest_statistics("library/hello", digest)["manifest_pull_count"] == 1


def test_credentials_are_part_of_the_identity(pair: tuple[Driver, Driver]) -> None:
    a, b = pair
    digest = a.head(HELLO, authorization="Bearer token-of-alice").headers["docker-content-digest"]
    b.get(f"/v2/library/hello/manifests/{digest}", authorization="Bearer token-of-bob")
    a.flush()
    b.flush()
    assert tag_count(a)[0] == 0


def test_forwarded_for_is_believed_only_from_trusted_proxies(
    kind: str, registry: MemoryRegistry, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    trusted = process(kind, registry, redis_server.url, trusted_proxies="10.0.0.0/8")
    untrusted = process(kind, registry, redis_server.url)
    counts = []
    for driver in (trusted, untrusted):  # one store: the second adds to the first
        digest = driver.head(HELLO, x_forwarded_for="192.0.2.1").headers["docker-content-digest"]
        driver.get(f"/v2/library/hello/manifests/{digest}", x_forwarded_for="192.0.2.2")
        driver.flush()
        counts.append(tag_count(driver)[0])
    # trusted: two different clients behind the proxy, no pair; untrusted: the
    # header is ignored, both requests come from the proxy's address: a pair
    assert counts == [0, 1]


def test_client_address_walks_back_through_trusted_hops() -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address("10.0.0.1", "192.0.2.9, 10.1.1.1", nets) == "192.0.2.9"
    assert client_address("10.0.0.1", "198.51.100.7, 192.0.2.9", nets) == "192.0.2.9"
    assert client_address("192.0.2.50", "192.0.2.9", nets) == "192.0.2.50"
    assert client_address("10.0.0.1", "192.0.2.9", ()) == "10.0.0.1"
    assert client_address("10.0.0.1", "10.0.0.2", nets) == "10.0.0.2"


def test_one_process_a_get_by_digest_then_a_head_of_the_tag_is_no_tag_pull(
    kind: str, registry: MemoryRegistry, real_redis: redis.Redis, redis_server: RedisServer
) -> None:
    """`docker pull @digest`, then an "is my tag up to date?" HEAD, both through one
    process: it knows the GET came first, so no clock-skew leeway pairs them."""
    a = process(kind, registry, redis_server.url)
    digest = registry.repositories["library/hello"].tags["v1"]
    assert a.get(f"/v2/library/hello/manifests/{digest}").status == 200
    assert a.head(HELLO).status == 200
    a.flush()
    assert a.metrics is not None
    assert a.metrics.get_tag_statistics("library/hello", "v1")["tag_pull_count"] == 0
    assert a.metrics.get_manifest_statistics("library/hello", digest)["manifest_pull_count"] == 1


def test_two_processes_pair_a_get_recorded_just_before_its_head(
    pair: tuple[Driver, Driver], registry: MemoryRegistry
) -> None:
    """Across processes (or hosts) clocks disagree: a GET stamped up to
    PULL_METRICS_CLOCK_SKEW before its HEAD still pairs."""
    a, b = pair
    digest = registry.repositories["library/hello"].tags["v1"]
    assert b.get(f"/v2/library/hello/manifests/{digest}").status == 200
    assert a.head(HELLO).status == 200  # a few ms after the GET, on another process
    b.flush()
    a.flush()
    assert tag_count(a) == (1, 1)


def test_platform_pull_with_the_index_cached_is_a_tag_pull(pair: tuple[Driver, Driver]) -> None:
    """One client pulls the multi-arch tag (the index body teaches the middleware its
    children); another, with the index cached, sends `HEAD latest` (the index digest)
    and then GETs only its platform's image, on another process: a tag pull."""
    a, b = pair
    index = a.get("/v2/library/multi/manifests/latest")
    arm64 = index.json()["manifests"][1]["digest"]
    a.flush()
    node = {"user_agent": "docker/20.10 --platform linux/arm64"}
    assert b.head("/v2/library/multi/manifests/latest", **node).status == 200
    assert a.get(f"/v2/library/multi/manifests/{arm64}", **node).status == 200
    b.flush()
    a.flush()
    assert a.metrics is not None
    stats = a.metrics.get_tag_statistics("library/multi", "latest")
    assert stats["tag_pull_count"] == 2
    assert stats["current_manifest_digest"] == index.headers["docker-content-digest"]
    assert a.metrics.get_manifest_statistics("library/multi", arm64)["manifest_pull_count"] == 1
