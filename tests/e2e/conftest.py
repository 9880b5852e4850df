"""The services most end-to-end modules share, one set per module: a redis-server, a
CNCF distribution registry, and `pullstats proxy` in front of it counting into Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.services import DockerRegistry, PullstatsProxy, RedisServer


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def registry() -> Iterator[DockerRegistry]:
    with DockerRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def proxy(registry: DockerRegistry, redis: RedisServer) -> Iterator[PullstatsProxy]:
    with PullstatsProxy(registry.url, redis.url) as service:
        yield service
