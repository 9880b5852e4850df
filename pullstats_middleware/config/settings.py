"""The one validated configuration object (docs/design.md, "Configuration").

Built from keyword arguments, from a mapping with the Quay-style keys (a
Flask `app.config`, a parsed YAML file), from a YAML file, or from environment
variables of the same names. Every invalid value fails here, at start-up,
naming its key. Each field carries its key and its help text, so `--help`,
the README and the loaders read one list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pullstats_middleware.config.exclusion import ExcludeRule, exclude_rules
from pullstats_middleware.config.redis_settings import RedisSettings
from pullstats_middleware.config.values import (
    ConfigError,
    IPNetwork,
    auth_mode,
    boolean,
    database_url,
    integer,
    label_values,
    networks,
    read_file,
    seconds,
)
from pullstats_middleware.matchers import StatsRequest

# A custom policy gets the request and the caller's headers (lower-case
# names) and returns True (allow), False (403) or an HTTP status to answer.
AuthPolicy = Callable[[StatsRequest, Mapping[str, str]], "bool | int"]

FALLBACK_REDIS = "USER_EVENTS_REDIS"


def _key(key: str, help: str, *, reading: bool = False) -> dict[str, Any]:
    """`reading`: `pullstats stats` needs it too (the rest only serving does)."""
    return {"key": key, "help": help, "reading": reading}


@dataclass(frozen=True, kw_only=True)
class PullStatsConfig:
    """Immutable, validated settings. Each field's metadata names its key and says what it is."""

    enabled: bool = field(
        default=False,
        metadata=_key(
            "FEATURE_IMAGE_PULL_STATS", "master switch; off, the middleware passes through"
        ),
    )
    redis: RedisSettings | None = field(
        default=None,
        metadata=_key(
            "PULL_METRICS_REDIS",
            "where counts live: a redis://, rediss:// or unix:// URL, or JSON "
            "{host, port, password, ssl, db, username}, {sentinels, service_name} or "
            "{cluster: true, startup_nodes}",
            reading=True,
        ),
    )
    key_prefix: str = field(
        default="pull_metrics",
        metadata=_key("PULL_METRICS_KEY_PREFIX", "prefix of every Redis key", reading=True),
    )
    path_prefix: str = field(
        default="", metadata=_key("PULL_METRICS_PATH_PREFIX", "path the registry is mounted under")
    )
    auth: str | AuthPolicy = field(
        default="registry",
        metadata=_key(
            "PULL_METRICS_AUTH",
            "who may read statistics: registry (ask the registry), none, or module:callable",
        ),
    )
    flush_interval: float = field(
        default=1.0,
        metadata=_key("PULL_METRICS_FLUSH_INTERVAL", "seconds between writes to the store"),
    )
    buffer_max_keys: int = field(
        default=100_000,
        metadata=_key(
            "PULL_METRICS_BUFFER_MAX_KEYS", "keys buffered in memory before new ones are dropped"
        ),
    )
    batch_max_keys: int = field(
        default=1_000, metadata=_key("PULL_METRICS_BATCH_MAX_KEYS", "keys per write to the store")
    )
    max_manifest_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=_key(
            "PULL_METRICS_MAX_MANIFEST_BYTES",
            "largest manifest hashed when the digest header is missing",
        ),
    )
    shutdown_timeout: float = field(
        default=5.0, metadata=_key("PULL_METRICS_SHUTDOWN_TIMEOUT", "seconds to flush at shutdown")
    )
    resolution_window: float = field(
        default=10.0,
        metadata=_key(
            "PULL_METRICS_RESOLUTION_WINDOW",
            "seconds a HEAD by tag waits for its GET by digest (containerd)",
        ),
    )
    clock_skew: float = field(
        default=1.0,
        metadata=_key(
            "PULL_METRICS_CLOCK_SKEW",
            "seconds a GET may seem to precede its HEAD when two processes or hosts recorded "
            "them (their clocks disagree); within one process the order is exact",
        ),
    )
    trusted_proxies: tuple[IPNetwork, ...] = field(
        default=(),
        metadata=_key(
            "PULL_METRICS_TRUSTED_PROXIES",
            "comma-separated networks whose X-Forwarded-For is believed",
        ),
    )

    database: str | None = field(
        default=None,
        metadata=_key(
            "PULL_METRICS_DATABASE",
            "an SQLAlchemy URL (sqlite:///pullstats.db, postgresql+psycopg://...): counts that "
            "outlive Redis; Redis then holds only what is not yet flushed there",
            reading=True,
        ),
    )
    database_flush_interval: float = field(
        default=10.0,
        metadata=_key(
            "PULL_METRICS_DATABASE_FLUSH_INTERVAL", "seconds between flushes from Redis to SQL"
        ),
    )
    history_days: int = field(
        default=400,
        metadata=_key(
            "PULL_METRICS_HISTORY_DAYS",
            "days of daily history (pulls and unique pullers per day) kept in SQL; the flush "
            "worker deletes older days (at most once an hour)",
        ),
    )
    embedded_flusher: bool = field(
        default=True,
        metadata=_key(
            "PULL_METRICS_EMBEDDED_FLUSHER",
            "with a database: each serving process flushes in a thread of its own; false when "
            "a separate `pullstats flush` process does it",
        ),
    )
    prometheus: bool = field(
        default=False,
        metadata=_key(
            "PULL_METRICS_PROMETHEUS",
            "serve the recorder's Prometheus metrics at /api/v1/pull_statistics/metrics "
            "(pullstats proxy: also at /metrics); needs the [prometheus] extra",
        ),
    )
    prometheus_token: str | None = field(
        default=None,
        metadata=_key(
            "PULL_METRICS_PROMETHEUS_TOKEN",
            "when set, a scrape must send Authorization: Bearer TOKEN; unset, the metrics "
            "are served to anyone, as /metrics usually is",
        ),
    )
    prometheus_repositories: tuple[str, ...] | int = field(
        default=0,
        metadata=_key(
            "PULL_METRICS_PROMETHEUS_REPOSITORIES",
            "per-repository pull counters, bounded: a list of repository names, or the most "
            'label values (the first repositories pulled); the rest count as repository="other"'
            "; 0: none",
        ),
    )
    exclude: tuple[ExcludeRule, ...] = field(
        default=(),
        metadata=_key(
            "PULL_METRICS_EXCLUDE",
            "clients whose pulls change no count and no date (scanners, replication, "
            'robots): a JSON list of rules like [{"user_agent": "^Trivy/"}, {"username": '
            '"replicator"}, {"network": "10.8.0.0/16"}]; a rule matches when all its fields do',
        ),
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place, once
        set_(self, "enabled", boolean(key_of("enabled"), self.enabled))
        set_(self, "embedded_flusher", boolean(key_of("embedded_flusher"), self.embedded_flusher))
        if self.database is not None:
            set_(self, "database", database_url(key_of("database"), self.database))
        if self.redis is not None:
            set_(self, "redis", RedisSettings.parse(key_of("redis"), self.redis))
        for name in (
            "flush_interval",
            "shutdown_timeout",
            "resolution_window",
            "database_flush_interval",
        ):
            set_(self, name, seconds(key_of(name), getattr(self, name)))
        set_(self, "clock_skew", seconds(key_of("clock_skew"), self.clock_skew, zero=True))
        for name in ("buffer_max_keys", "batch_max_keys", "max_manifest_bytes", "history_days"):
            set_(self, name, integer(key_of(name), getattr(self, name), minimum=1))
        prefix = self.key_prefix
        if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
            raise ConfigError(
                f"{key_of('key_prefix')} must be a non-empty string not ending in '/'"
            )
        if self.redis is not None and self.redis.cluster and ("{" in prefix or "}" in prefix):
            # Redis Cluster places a key by the first {...} in its name: the repository's
            raise ConfigError(
                f"{key_of('key_prefix')} must not contain {{ or }} with a Redis Cluster, "
                f"got {prefix!r}"
            )
        path = self.path_prefix
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise ConfigError(
                f"{key_of('path_prefix')} must be empty or start with '/', got {path!r}"
            )
        set_(self, "path_prefix", path.rstrip("/"))
        set_(self, "auth", auth_mode(key_of("auth"), self.auth))
        set_(self, "trusted_proxies", networks(key_of("trusted_proxies"), self.trusted_proxies))
        set_(self, "exclude", exclude_rules(key_of("exclude"), self.exclude))
        set_(self, "prometheus", boolean(key_of("prometheus"), self.prometheus))
        token = self.prometheus_token
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigError(f"{key_of('prometheus_token')} must be a non-empty string")
        key = key_of("prometheus_repositories")
        set_(self, "prometheus_repositories", label_values(key, self.prometheus_repositories))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **overrides: Any) -> PullStatsConfig:
        """From the Quay-style keys; `PULL_METRICS_REDIS` falls back to `USER_EVENTS_REDIS`."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f.metadata["key"]
            if key in mapping and mapping[key] is not None:
                kwargs[f.name] = mapping[key]
        if "redis" not in kwargs and mapping.get(FALLBACK_REDIS) is not None:
            kwargs["redis"] = RedisSettings.parse(FALLBACK_REDIS, mapping[FALLBACK_REDIS])
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a value of a shape no parser expected
            raise ConfigError(" ".join(str(exc).split())) from None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> PullStatsConfig:
        """From environment variables of the same names (Redis as JSON or a URL)."""
        return cls.from_mapping(env_values(environ), **overrides)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str] | None,
        *,
        environ: Mapping[str, str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> PullStatsConfig:
        """From a YAML (or JSON) file of the same keys (Quay's config.yaml works; other
        keys are ignored). Precedence: `defaults` < the file < `environ` < `overrides`;
        `path` None reads no file."""
        mapping = dict(defaults or {})
        if path is not None:
            mapping.update((k, v) for k, v in read_file(path).items() if v is not None)
        if environ is not None:
            mapping.update(env_values(environ))
        return cls.from_mapping(mapping, **overrides)


# Every key the loaders read, in the order `--help` lists them, with its help text;
# READING_KEYS: the ones a reader of the statistics (`pullstats stats`) needs.
KEYS: dict[str, str] = {}
READING_KEYS: set[str] = {FALLBACK_REDIS}
for _f in fields(PullStatsConfig):
    KEYS[_f.metadata["key"]] = _f.metadata["help"]
    if _f.metadata["reading"]:
        READING_KEYS.add(_f.metadata["key"])
    if _f.name == "redis":
        KEYS[FALLBACK_REDIS] = "used when PULL_METRICS_REDIS is not set"


def key_of(name: str) -> str:
    """The mapping/environment key of the field `name`."""
    for f in fields(PullStatsConfig):
        if f.name == name:
            return str(f.metadata["key"])
    raise KeyError(name)


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The configuration keys set (non-empty) in `environ` (default: the process's)."""
    env = os.environ if environ is None else environ
    return {key: env[key] for key in KEYS if env.get(key, "") != ""}
