"""Where the counts live: one Redis, a URL, Redis Sentinel or Redis Cluster, and the
client for it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pullstats_middleware.config.values import ConfigError, boolean, host_ports, integer, seconds

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

# Fields that name one server: meaningless (so refused) next to startup_nodes.
_SINGLE_SERVER = ("host", "port", "url", "sentinels", "service_name", "sentinel_password")


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """Where the counts live: `{host, port, password, ssl, db, username}`, a `url`,
    Redis Sentinel: `{sentinels: ["host:port", ...], service_name, ...}`, or Redis
    Cluster: `{cluster: true, startup_nodes: ["host:port", ...], ...}`."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    url: str | None = None
    socket_timeout: float = 5.0
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None  # the master's name the sentinels monitor
    sentinel_password: str | None = None
    cluster: bool = False
    startup_nodes: tuple[tuple[str, int], ...] = ()  # any of the cluster's nodes
    # Cluster: how many replicas must hold a write before it counts as done (Redis
    # WAIT); 0: the master's reply is enough (a master that dies can lose the last ones).
    wait_replicas: int = 0

    @classmethod
    def parse(cls, key: str, value: Any) -> RedisSettings:
        if isinstance(value, RedisSettings):
            return value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    raise ConfigError(f"{key}: not valid JSON ({exc})") from None
            else:
                value = {"url": text}
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{key} must be a mapping {{host, port, password, ssl, db, username}} "
                f"or a redis URL, got {type(value).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"{key} has unknown field(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, raw in value.items():
            if name in ("port", "db", "wait_replicas"):
                kwargs[name] = integer(f"{key}.{name}", raw, minimum=0)
            elif name in ("ssl", "cluster"):
                kwargs[name] = boolean(f"{key}.{name}", raw)
            elif name == "socket_timeout":
                kwargs[name] = seconds(f"{key}.{name}", raw)
            elif name in ("sentinels", "startup_nodes"):
                kwargs[name] = host_ports(f"{key}.{name}", raw)
            elif raw is None or isinstance(raw, str):
                kwargs[name] = raw
            else:
                raise ConfigError(f"{key}.{name} must be a string, got {type(raw).__name__}")
        settings = cls(**kwargs)
        if settings.cluster or settings.startup_nodes or settings.wait_replicas:
            _check_cluster(key, settings, set(value))
        if bool(settings.sentinels) != bool(settings.service_name):
            raise ConfigError(f"{key}: sentinels and service_name go together")
        if settings.sentinels and settings.url is not None:
            raise ConfigError(f"{key}: give either url or sentinels, not both")
        if settings.url is not None:
            scheme = urlsplit(settings.url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise ConfigError(
                    f"{key}.url must start with redis://, rediss:// or unix://, "
                    f"got {settings.url!r}"
                )
        return settings

    def client(self) -> redis.Redis | RedisCluster:
        import redis

        timeout = self.socket_timeout
        if self.cluster:
            from redis.cluster import ClusterNode, RedisCluster

            return RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in self.startup_nodes],  # type: ignore[no-untyped-call]
                username=self.username,
                password=self.password,
                ssl=self.ssl,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
        if self.sentinels:
            from redis.sentinel import Sentinel

            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels),
                sentinel_kwargs={
                    "password": self.sentinel_password,
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout,
                },
                socket_timeout=timeout,
            )
            # A client that asks the sentinels for the current master on every
            # (re)connect, so a failover is followed without a restart.
            assert self.service_name is not None
            master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
                self.service_name,
                db=self.db,
                username=self.username,
                password=self.password,
                ssl=self.ssl,
                socket_connect_timeout=timeout,
            )
            return master
        if self.url is not None:
            return redis.Redis.from_url(
                self.url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        return redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.ssl,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def describe(self) -> str:
        """Where it points, without the password."""
        if self.cluster:
            hosts = ",".join(f"{h}:{p}" for h, p in self.startup_nodes)
            return f"{'rediss' if self.ssl else 'redis'}-cluster://{hosts}"
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel://{hosts}/{self.service_name}/{self.db}"
        if self.url is not None:
            parts = urlsplit(self.url)
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            return f"{parts.scheme}://{netloc}{parts.path}"
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"


def _check_cluster(key: str, settings: RedisSettings, given: set[str]) -> None:
    """A cluster is `cluster: true` with its nodes, and nothing that names one server."""
    if not settings.cluster:
        what = "startup_nodes" if settings.startup_nodes else "wait_replicas"
        raise ConfigError(f'{key}.{what} is for Redis Cluster: add "cluster": true')
    if not settings.startup_nodes:
        raise ConfigError(f"{key}: a cluster needs startup_nodes, a list of host:port of its nodes")
    clashing = sorted(given & set(_SINGLE_SERVER))
    if clashing:
        raise ConfigError(
            f"{key}: {', '.join(clashing)} name(s) one server; a cluster is found through "
            "startup_nodes alone"
        )
    if settings.db != 0:
        raise ConfigError(f"{key}.db must be 0 with a cluster (Redis Cluster has one database)")
