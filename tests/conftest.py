from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from redis.cluster import ClusterNode, RedisCluster

from pullstats_middleware import PullMetrics, PullStatsConfig
from pullstats_middleware.demo_registry import MemoryRegistry
from pullstats_middleware.durable import Database
from pullstats_middleware.store import MemoryStore, RedisClusterStore, RedisStore, Store
from tests.apps import Driver, make_driver
from tests.e2e.services import RedisServer
from tests.postgres import PostgresServer
from tests.redis_cluster import LocalCluster


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session; tests that stop it restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster of three masters for the session (tests that break a
    cluster start their own)."""
    with LocalCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[RedisCluster]:
    """A client of the session's cluster, emptied first."""
    for node in redis_cluster.running():
        node.client().flushall()
    nodes = [ClusterNode(node.host, node.port) for node in redis_cluster.running()]
    client = RedisCluster(startup_nodes=nodes)
    yield client
    client.close()


def _store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "fakeredis":
        import fakeredis

        return RedisStore(fakeredis.FakeRedis())
    if request.param == "cluster":
        return RedisClusterStore(request.getfixturevalue("cluster_client"))
    return RedisStore(request.getfixturevalue("real_redis"))


@pytest.fixture(params=["memory", "fakeredis", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Store:
    """Every store, through the same cases; `redis` is a real redis-server, `cluster`
    a real Redis Cluster of three masters."""
    return _store(request)


@pytest.fixture(params=["fakeredis", "redis"])
def redis_store(request: pytest.FixtureRequest) -> RedisStore:
    store = _store(request)
    assert isinstance(store, RedisStore)
    return store


@pytest.fixture
def registry() -> MemoryRegistry:
    reg = MemoryRegistry()
    for repo in ("library/hello", "library/multi/manifests/tools"):
        reg.push_image(repo, "v1", b"layer of " + repo.encode())
    reg.push_index("library/multi", "latest", ["linux/amd64", "linux/arm64"])
    reg.push_image("private/app", "v1", b"secret layer")
    reg.protect("private/app", "alice", "wonderland")
    return reg


@pytest.fixture
def config() -> PullStatsConfig:
    return PullStatsConfig(enabled=True, flush_interval=0.05)


@pytest.fixture
def metrics(config: PullStatsConfig) -> Iterator[PullMetrics]:
    m = PullMetrics(config, store=MemoryStore())
    yield m
    m.close()


@pytest.fixture(params=["wsgi", "asgi"])
def client(
    request: pytest.FixtureRequest,
    registry: MemoryRegistry,
    config: PullStatsConfig,
    metrics: PullMetrics,
) -> Driver:
    """The test registry behind one of the two middlewares."""
    return make_driver(request.param, registry, config, metrics)


@pytest.fixture(params=["wsgi", "asgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, migrated database per test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'pullstats.db'}"
    else:
        url = new_postgres_database(request.getfixturevalue("postgres"))
    database = Database(url)
    database.upgrade()
    database.close()
    yield url


def new_postgres_database(server: PostgresServer, *, icu: bool = False) -> str:
    """The URL of a new, empty database on `server`; `icu`: its text sorts as English
    does (ICU's en-US: case and punctuation are weighed apart), not by code point."""
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    locale = " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'" if icu else ""
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}{locale}")
    admin.dispose()
    return server.url.rsplit("/", 1)[0] + "/" + name
