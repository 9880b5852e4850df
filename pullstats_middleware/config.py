"""The one validated configuration object (DESIGN §4).

Built from keyword arguments, from a mapping with the Quay-style keys (a
Flask `app.config`, a parsed YAML file), or from environment variables of the
same names. Every invalid value fails here, at start-up, naming its key.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import redis

    from pullstats_middleware.api import AuthPolicy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """Where the counts live: `{host, port, password, ssl, db, username}`, a `url`, or
    Redis Sentinel: `{sentinels: ["host:port", ...], service_name, ...}`."""

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
            if name in ("port", "db"):
                kwargs[name] = _int(f"{key}.{name}", raw, minimum=0)
            elif name == "ssl":
                kwargs[name] = _bool(f"{key}.{name}", raw)
            elif name == "socket_timeout":
                kwargs[name] = _positive(f"{key}.{name}", raw)
            elif name == "sentinels":
                kwargs[name] = _sentinels(f"{key}.{name}", raw)
            elif raw is None or isinstance(raw, str):
                kwargs[name] = raw
            else:
                raise ConfigError(f"{key}.{name} must be a string, got {type(raw).__name__}")
        settings = cls(**kwargs)
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

    def client(self) -> redis.Redis:
        import redis

        timeout = self.socket_timeout
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


@dataclass(frozen=True, kw_only=True)
class PullStatsConfig:
    """Immutable, validated settings. The metadata `key` is the mapping/env name."""

    enabled: bool = field(default=False, metadata={"key": "FEATURE_IMAGE_PULL_STATS"})
    redis: RedisSettings | None = field(default=None, metadata={"key": "PULL_METRICS_REDIS"})
    key_prefix: str = field(default="pull_metrics", metadata={"key": "PULL_METRICS_KEY_PREFIX"})
    path_prefix: str = field(default="", metadata={"key": "PULL_METRICS_PATH_PREFIX"})
    auth: str | AuthPolicy = field(default="registry", metadata={"key": "PULL_METRICS_AUTH"})
    flush_interval: float = field(default=1.0, metadata={"key": "PULL_METRICS_FLUSH_INTERVAL"})
    buffer_max_keys: int = field(default=100_000, metadata={"key": "PULL_METRICS_BUFFER_MAX_KEYS"})
    batch_max_keys: int = field(default=1_000, metadata={"key": "PULL_METRICS_BATCH_MAX_KEYS"})
    max_manifest_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"key": "PULL_METRICS_MAX_MANIFEST_BYTES"}
    )
    shutdown_timeout: float = field(default=5.0, metadata={"key": "PULL_METRICS_SHUTDOWN_TIMEOUT"})
    resolution_window: float = field(
        default=30.0, metadata={"key": "PULL_METRICS_RESOLUTION_WINDOW"}
    )
    trusted_proxies: tuple[IPNetwork, ...] = field(
        default=(), metadata={"key": "PULL_METRICS_TRUSTED_PROXIES"}
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place, once
        set_(self, "enabled", _bool(_k("enabled"), self.enabled))
        if self.redis is not None:
            set_(self, "redis", RedisSettings.parse(_k("redis"), self.redis))
        for name in ("flush_interval", "shutdown_timeout", "resolution_window"):
            set_(self, name, _positive(_k(name), getattr(self, name)))
        for name in ("buffer_max_keys", "batch_max_keys", "max_manifest_bytes"):
            set_(self, name, _int(_k(name), getattr(self, name), minimum=1))
        prefix = self.key_prefix
        if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
            raise ConfigError(f"{_k('key_prefix')} must be a non-empty string not ending in '/'")
        path = self.path_prefix
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise ConfigError(f"{_k('path_prefix')} must be empty or start with '/', got {path!r}")
        set_(self, "path_prefix", path.rstrip("/"))
        set_(self, "auth", _auth(_k("auth"), self.auth))
        set_(self, "trusted_proxies", _networks(_k("trusted_proxies"), self.trusted_proxies))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **overrides: Any) -> PullStatsConfig:
        """From the Quay-style keys; `PULL_METRICS_REDIS` falls back to `USER_EVENTS_REDIS`."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f.metadata["key"]
            if key in mapping and mapping[key] is not None:
                kwargs[f.name] = mapping[key]
        if "redis" not in kwargs and mapping.get("USER_EVENTS_REDIS") is not None:
            kwargs["redis"] = RedisSettings.parse("USER_EVENTS_REDIS", mapping["USER_EVENTS_REDIS"])
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> PullStatsConfig:
        """From environment variables of the same names (Redis as JSON or a URL)."""
        env = os.environ if environ is None else environ
        keys = [f.metadata["key"] for f in fields(cls)] + ["USER_EVENTS_REDIS"]
        return cls.from_mapping({k: env[k] for k in keys if env.get(k, "") != ""}, **overrides)


def _k(name: str) -> str:
    for f in fields(PullStatsConfig):
        if f.name == name:
            return str(f.metadata["key"])
    raise KeyError(name)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _int(key: str, value: Any, *, minimum: int) -> int:
    try:
        number = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return number


def _positive(key: str, value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not number > 0 or number == float("inf"):
        raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}")
    return number


def _auth(key: str, value: Any) -> str | Callable[..., Any]:
    if callable(value):
        return value  # type: ignore[no-any-return]
    if value in ("registry", "none"):
        return str(value)
    if isinstance(value, str) and ":" in value:
        module, _, attr = value.partition(":")
        try:
            target = getattr(__import__(module, fromlist=[attr]), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{key}: cannot load {value!r} ({exc})") from None
        if callable(target):
            return target  # type: ignore[no-any-return]
    raise ConfigError(
        f"{key} must be 'registry', 'none', a callable or 'module:callable', got {value!r}"
    )


def _sentinels(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    """`["host:port", ...]`, `[[host, port], ...]` or `"host:port,host:port"`."""
    items = value.split(",") if isinstance(value, str) else value
    out = []
    try:
        for item in items:
            host, port = item.rsplit(":", 1) if isinstance(item, str) else item
            out.append((str(host).strip(), _int(key, port, minimum=1)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must be a list of host:port, got {value!r} ({exc})") from None
    if not out or not all(host for host, _ in out):
        raise ConfigError(f"{key} must name at least one host:port, got {value!r}")
    return tuple(out)


def _networks(key: str, value: Any) -> tuple[IPNetwork, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(
            item if not isinstance(item, str) else ipaddress.ip_network(item.strip(), strict=False)
            for item in items
            if not (isinstance(item, str) and not item.strip())
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{key} must be a list of IP addresses or networks, got {value!r} ({exc})"
        ) from None
