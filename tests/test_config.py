"""docs/design.md, "Configuration": one validated config; every bad value names its key."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest

from pullstats_middleware import ConfigError, PullMetrics, PullStatsConfig, RedisSettings
from pullstats_middleware.store import MemoryStore, RedisStore


def test_defaults() -> None:
    config = PullStatsConfig()
    assert config.enabled is False
    assert config.redis is None
    assert config.key_prefix == "pull_metrics"
    assert config.auth == "registry"
    assert config.resolution_window == 10.0


def test_seed_keys_from_a_mapping() -> None:
    config = PullStatsConfig.from_mapping(
        {
            "FEATURE_IMAGE_PULL_STATS": True,
            "PULL_METRICS_REDIS": {
                "host": "redis.internal",
                "port": 6380,
                "password": "pw",
                "ssl": True,
                "db": 2,
                "username": "u",
            },
            "PULL_METRICS_FLUSH_INTERVAL": 0.5,
            "PULL_METRICS_TRUSTED_PROXIES": ["10.0.0.0/8"],
            "SOMETHING_ELSE": "ignored",
        }
    )
    assert config.enabled is True
    assert config.redis == RedisSettings(
        host="redis.internal", port=6380, password="pw", ssl=True, db=2, username="u"
    )
    assert config.flush_interval == 0.5
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)


def test_user_events_redis_is_the_fallback() -> None:
    fallback = {"USER_EVENTS_REDIS": {"host": "events", "port": 6379}}
    assert PullStatsConfig.from_mapping(fallback).redis == RedisSettings(host="events")
    both = {**fallback, "PULL_METRICS_REDIS": {"host": "metrics"}}
    assert PullStatsConfig.from_mapping(both).redis == RedisSettings(host="metrics")


@pytest.mark.parametrize(
    "url", ["redis://h:1/2", "rediss://u:p@h:6380/0", "unix:///run/redis.sock?db=1"]
)
def test_redis_url_forms(url: str) -> None:
    settings = PullStatsConfig(redis={"url": url}).redis
    assert settings is not None and settings.url == url
    client = settings.client()  # parses the URL; connects lazily
    client.close()


def test_describe_hides_the_password() -> None:
    assert RedisSettings(url="redis://u:secret@h:1/2").describe() == "redis://h:1/2"


def test_from_env() -> None:
    env = {
        "FEATURE_IMAGE_PULL_STATS": "true",
        "PULL_METRICS_REDIS": '{"host": "r", "port": 7000}',
        "PULL_METRICS_BUFFER_MAX_KEYS": "50",
        "PULL_METRICS_AUTH": "none",
        "PULL_METRICS_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16",
    }
    config = PullStatsConfig.from_env(env)
    assert config.enabled and config.redis == RedisSettings(host="r", port=7000)
    assert config.buffer_max_keys == 50 and config.auth == "none"
    assert len(config.trusted_proxies) == 2
    assert PullStatsConfig.from_env({"USER_EVENTS_REDIS": "redis://e:1/0"}).redis == RedisSettings(
        url="redis://e:1/0"
    )


@pytest.mark.parametrize(
    "mapping, key",
    [
        ({"FEATURE_IMAGE_PULL_STATS": "maybe"}, "FEATURE_IMAGE_PULL_STATS"),
        ({"PULL_METRICS_REDIS": 6379}, "PULL_METRICS_REDIS"),
        ({"PULL_METRICS_REDIS": {"hots": "x"}}, "PULL_METRICS_REDIS has unknown field(s) hots"),
        ({"PULL_METRICS_REDIS": {"port": "abc"}}, "PULL_METRICS_REDIS.port"),
        ({"PULL_METRICS_REDIS": {"url": "http://x"}}, "PULL_METRICS_REDIS.url"),
        ({"PULL_METRICS_REDIS": "{not json"}, "PULL_METRICS_REDIS: not valid JSON"),
        ({"USER_EVENTS_REDIS": {"ssl": "perhaps"}}, "USER_EVENTS_REDIS.ssl"),
        ({"PULL_METRICS_FLUSH_INTERVAL": 0}, "PULL_METRICS_FLUSH_INTERVAL"),
        ({"PULL_METRICS_FLUSH_INTERVAL": "soon"}, "PULL_METRICS_FLUSH_INTERVAL"),
        ({"PULL_METRICS_BUFFER_MAX_KEYS": -1}, "PULL_METRICS_BUFFER_MAX_KEYS"),
        ({"PULL_METRICS_BUFFER_MAX_KEYS": 1.5}, "PULL_METRICS_BUFFER_MAX_KEYS"),
        ({"PULL_METRICS_KEY_PREFIX": "x/"}, "PULL_METRICS_KEY_PREFIX"),
        ({"PULL_METRICS_PATH_PREFIX": "registry"}, "PULL_METRICS_PATH_PREFIX"),
        ({"PULL_METRICS_AUTH": "ldap"}, "PULL_METRICS_AUTH"),
        ({"PULL_METRICS_AUTH": "no.such.module:policy"}, "PULL_METRICS_AUTH"),
        ({"PULL_METRICS_TRUSTED_PROXIES": "10.0.0.300"}, "PULL_METRICS_TRUSTED_PROXIES"),
        ({"PULL_METRICS_RESOLUTION_WINDOW": "inf"}, "PULL_METRICS_RESOLUTION_WINDOW"),
    ],
)
def test_invalid_values_name_their_key(mapping: dict[str, object], key: str) -> None:
    with pytest.raises(
        ConfigError, match=key.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        PullStatsConfig.from_mapping(mapping)


def test_auth_from_a_dotted_path() -> None:
    config = PullStatsConfig(auth="tests.test_config:allow_all")
    assert config.auth is allow_all


def allow_all(request: object, headers: object) -> bool:
    return True


def test_no_redis_means_the_memory_store_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "pullstats_middleware"):
        metrics = PullMetrics(PullStatsConfig(enabled=True))
    assert isinstance(metrics.store, MemoryStore)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "process memory" in caplog.records[0].message
    metrics.close()


def test_redis_configured_means_the_redis_store() -> None:
    metrics = PullMetrics(PullStatsConfig(redis={"url": "redis://127.0.0.1:1/0"}, key_prefix="pm"))
    assert isinstance(metrics.store, RedisStore) and metrics.store.prefix == "pm"
    metrics.close(timeout=0.1)


def test_config_is_immutable() -> None:
    config = PullStatsConfig()
    with pytest.raises(AttributeError):
        config.enabled = True  # type: ignore[misc]


def test_every_key_has_help_text_with_its_field() -> None:
    """`--help` and the README read these; a new field without help fails here."""
    from dataclasses import fields

    from pullstats_middleware.config import KEYS

    for f in fields(PullStatsConfig):
        assert f.metadata.get("key", "").isupper(), f.name
        assert len(f.metadata.get("help", "")) > 10, f"{f.name} has no help text"
        assert KEYS[f.metadata["key"]] == f.metadata["help"]
    assert "USER_EVENTS_REDIS" in KEYS


def test_from_file_precedence(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "FEATURE_IMAGE_PULL_STATS: true\nPULL_METRICS_FLUSH_INTERVAL: 2\nOTHER_KEY: ignored\n"
    )
    assert PullStatsConfig.from_file(path).flush_interval == 2.0
    env = {"PULL_METRICS_FLUSH_INTERVAL": "3"}
    assert PullStatsConfig.from_file(path, environ=env).flush_interval == 3.0
    assert PullStatsConfig.from_file(path, environ=env, flush_interval=4).flush_interval == 4.0
    assert PullStatsConfig.from_file(None, defaults={"PULL_METRICS_AUTH": "none"}).auth == "none"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"FEATURE_IMAGE_PULL_STATS: [", "is not valid YAML"),
        (b"- a list\n", "must hold a mapping"),
        (b"PULL_METRICS_AUTH: caf\xe9\n", "is not UTF-8 text"),
        (b"PULL_METRICS_FLUSH_INTERVAL: soon\n", "PULL_METRICS_FLUSH_INTERVAL"),
    ],
)
def test_from_file_errors_name_the_problem(tmp_path: Any, content: bytes, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        PullStatsConfig.from_file(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        PullStatsConfig.from_file(tmp_path / "absent.yaml")


def test_statistics_off_says_so_once_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    """`from_env()` without FEATURE_IMAGE_PULL_STATS=true silently did nothing."""
    from pullstats_middleware import PullStatsASGIMiddleware, PullStatsMiddleware

    with caplog.at_level(logging.WARNING, logger="pullstats_middleware"):
        PullStatsMiddleware(lambda environ, start_response: [], PullStatsConfig.from_env({}))
        PullStatsASGIMiddleware(lambda scope, receive, send: None, PullStatsConfig())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert all("FEATURE_IMAGE_PULL_STATS=true" in line and "off" in line for line in lines)


def test_the_core_runs_without_the_sql_extra() -> None:
    """SQLAlchemy is the [sql] extra: without it everything else imports and counts, and
    a configured database says what to install."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['sqlalchemy'] = None; sys.modules['alembic'] = None\n"
        "import pullstats_middleware.cli, pullstats_middleware.proxy\n"
        "from pullstats_middleware import ConfigError, PullMetrics, PullStatsConfig\n"
        "m = PullMetrics(PullStatsConfig(enabled=True)); m.track_tag_pull('a/b', 'v1', "
        "'sha256:' + 'a' * 64); assert m.flush(5); m.close()\n"
        "try:\n    PullMetrics(PullStatsConfig(enabled=True, database='sqlite://'))\n"
        "except ConfigError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'pullstats-middleware[sql]'" in done.stdout
